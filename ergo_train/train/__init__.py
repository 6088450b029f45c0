"""Training: recipe/config beside the GRPO/GSPO trainer, and the curated set as a TRL dataset."""
