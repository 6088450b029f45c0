"""ergo_data: curation of high-resolution visual QA data with task-relevant regions."""

__version__ = "0.1.0"
