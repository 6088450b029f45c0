"""The coarse-to-fine rollout: completion parsing, zoom crops, and ``ZoomEnv`` (TRL's ``environment_factory``).

``zoom_env_factory(max_pixels)`` is the factory to pass to ``GRPOTrainer(environment_factory=...)``.
"""

from ergo_train.rollout.env import ZoomEnv, zoom_env_factory

__all__ = ["ZoomEnv", "zoom_env_factory"]
