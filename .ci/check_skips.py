"""Fail unless every skipped test is on the allowlist: ``check_skips.py SKIP_LOG ALLOWLIST``.

SKIP_LOG holds one JSON line ``{"nodeid", "reason"}`` per skip (written by the root conftest.py when
ERGO_SKIP_LOG is set). ALLOWLIST has one entry per line, ``PATTERN  # why it may skip``: PATTERN is an
``fnmatch`` pattern over the test's node id; the comment is required. Blank lines and lines starting with
``#`` are ignored. Exit 0 if every skip matches an entry, 1 otherwise (listing the others).
"""

from __future__ import annotations

import fnmatch
import json
import sys
from pathlib import Path


def read_allowlist(path: Path) -> list[str]:
    patterns = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if path.is_file() else []:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, why = line.partition("#")
        if not sep or not why.strip():
            sys.exit(f"CI: {path}:{n}: {pattern.strip()!r} has no comment saying why it may skip")
        patterns.append(pattern.strip())
    return patterns


def main(log: str, allowlist: str) -> int:
    patterns = read_allowlist(Path(allowlist))
    skips = [json.loads(line) for line in Path(log).read_text(encoding="utf-8").splitlines() if line.strip()] \
        if Path(log).is_file() else []
    bad = [s for s in skips if not any(fnmatch.fnmatchcase(s["nodeid"], p) for p in patterns)]
    for s in skips:
        print(f"CI: {'NOT ALLOWED' if s in bad else 'allowed'} skip: {s['nodeid']}: {s['reason']}")
    if bad:
        print(f"CI: {len(bad)} skipped test(s) not on {allowlist}: make them run (or add them there with a "
              "comment saying why they may skip)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
