"""Stages: one module per stage family; each stage is a small class over Arrow batches (see base.py)."""
