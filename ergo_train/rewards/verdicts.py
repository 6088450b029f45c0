"""A judge's ``Verdict`` and the ``JudgeCache`` of verdicts, shared by runs and by the processes of one run.

``JudgeCache(path)`` keeps verdicts in memory and in a SQLite file in WAL mode: the ranks of a multi-GPU run (and
any other run pointed at the same file) read while one of them writes, and writers wait their turn (busy
timeout) instead of failing. A write that still cannot get the lock is skipped with a warning: the verdict is
kept in memory and returned, the file only misses it. WAL needs a local file system (not NFS).

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "verdicts.sqlite")
>>> JudgeCache(path).put("k", Verdict(True, 0.9, "picked A"))
>>> JudgeCache(path).get("k"), JudgeCache(path).journal_mode
(Verdict(correct=True, confidence=0.9, detail='picked A'), 'wal')
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ergo_data.core.boxes import Box

log = logging.getLogger(__name__)
BUSY_TIMEOUT_S = 60.0  # how long a writer waits for another process's write before giving up on the file


@dataclass(frozen=True, slots=True)
class Verdict:
    """``correct``: the crop lets one answer correctly. ``confidence`` in [0, 1] (None if the judge has none)."""

    correct: bool
    confidence: float | None = None
    detail: str = ""
    failed: bool = field(default=False, repr=False, compare=False)  # no verdict could be had (counted not answerable,
    # reason in ``detail``); never cached, so a transient server failure is asked again next time


class JudgeCache:
    """Verdicts by key, in memory (the oldest ``max_memory`` entries are dropped first); with ``path`` also in a
    SQLite file (WAL) shared across runs and processes."""

    def __init__(self, path: str | Path | None = None, max_memory: int = 200_000,
                 busy_timeout_s: float = BUSY_TIMEOUT_S) -> None:
        self.memory: dict[str, Verdict] = {}
        self.max_memory = max(1, int(max_memory))
        self.hits = self.misses = 0
        self.skipped_writes = 0
        self.journal_mode: str | None = None
        self._db = None
        self._lock = threading.Lock()  # one connection, used from the reward and judge threads
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # autocommit (isolation_level None): each statement is its own transaction, no lock is held between them
            self._db = sqlite3.connect(str(path), timeout=busy_timeout_s, check_same_thread=False,
                                       isolation_level=None)
            self.journal_mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, value TEXT)")

    @staticmethod
    def key(fingerprint: str, image_sha256: str, box: Box, question: str, options: Sequence[str], answer: str,
            view: str = "crop") -> str:
        rect = (math.floor(box.x1), math.floor(box.y1), math.ceil(box.x2), math.ceil(box.y2))  # the crop's pixels
        raw = json.dumps([fingerprint, image_sha256, rect, question, list(options), answer, view])
        return hashlib.sha256(raw.encode()).hexdigest()

    def get(self, key: str) -> Verdict | None:
        v = self.memory.get(key)
        if v is None and self._db is not None:
            with self._lock:
                row = self._db.execute("SELECT value FROM verdicts WHERE key = ?", (key,)).fetchone()
            if row:
                v = Verdict(**json.loads(row[0]))
                self._remember(key, v)
        if v is None:
            self.misses += 1
        else:
            self.hits += 1
        return v

    def _remember(self, key: str, verdict: Verdict) -> None:
        self.memory[key] = verdict
        while len(self.memory) > self.max_memory:  # dicts keep insertion order: drop the oldest
            del self.memory[next(iter(self.memory))]

    def put(self, key: str, verdict: Verdict) -> None:
        self._remember(key, verdict)
        if self._db is None:
            return
        value = json.dumps({"correct": verdict.correct, "confidence": verdict.confidence, "detail": verdict.detail})
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?)", (key, value))
        except sqlite3.OperationalError as e:  # still locked after the busy timeout: a cache miss later, not a crash
            self.skipped_writes += 1
            log.warning("judge cache: verdict not written (%s); it stays in memory", e)
