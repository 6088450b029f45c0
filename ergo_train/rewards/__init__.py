"""ERGO's rewards in TRL's signature and their name -> function registry (``REWARD_REGISTRY``), region judges,
validation against human labels and the reward-hacking replay.

>>> from ergo_train.rewards import REWARD_REGISTRY, make_reward
>>> sorted(REWARD_REGISTRY)[:3]
['r_acc', 'r_box', 'r_format']
"""

from ergo_train.rewards.functions import (
    NEEDS_JUDGE,
    REWARD_REGISTRY,
    RewardConfigError,
    make_reward,
    reward_params,
)

__all__ = ["NEEDS_JUDGE", "REWARD_REGISTRY", "RewardConfigError", "make_reward", "reward_params"]
