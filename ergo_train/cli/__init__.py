"""``ergo`` commands of ergo_train (rewards, train, eval), added through the ergo.plugins entry point."""
