"""ergo_train: rewards, judges, two-turn zoom rollout, GRPO/GSPO training and evaluation."""
