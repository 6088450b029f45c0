"""Executors: segment logic shared by the local and the Ray executor."""
