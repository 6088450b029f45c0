"""Evaluation: benchmark loaders (V*, HR-Bench, MME-RealWorld), the evaluation run and its report."""
