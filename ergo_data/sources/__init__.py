"""Sources: one module per input kind, each turning files into Sample rows (see base.py)."""
