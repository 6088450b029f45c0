"""ergo_data: curation of high-resolution visual QA data with task-relevant regions."""

import os

# Arrow's buffers from malloc rather than its default mimalloc (read when pyarrow first allocates, so only if
# nothing set it before): mimalloc kept what the barriers and the final write read from the many chunk files,
# and the peak RSS of a run grew x1.10 from 1k to 10k images; x1.05, and 8% lower, with malloc
# (benchmarks/scale.py, docs/scale.md).
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

__version__ = "0.1.0"
