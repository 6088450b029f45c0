"""Model-backed stages (difficulty, counterfactual) registered into ergo_data's stage registry."""
