"""The verdict cache shared by several processes: the ranks of one multi-GPU run write one SQLite file at once."""

from __future__ import annotations

import multiprocessing
import sqlite3

from ergo_train.rewards.verdicts import JudgeCache, Verdict

N = 150


def _writer(path: str, rank: int, start, out) -> None:
    """One rank: write N verdicts of its own, reading the other rank's keys between writes."""
    cache = JudgeCache(path)
    start.wait()
    seen_other = 0
    for i in range(N):
        cache.put(f"{rank}-{i}", Verdict(i % 2 == 0, i / N, f"rank {rank} item {i}"))
        cache.memory.clear()  # read from the file, not from this process's memory
        seen_other += cache.get(f"{1 - rank}-{i}") is not None
    out.put((rank, cache.skipped_writes, cache.journal_mode, seen_other))


def test_two_processes_write_one_cache_file_while_a_reader_holds_a_snapshot(tmp_path):
    path = str(tmp_path / "judge.sqlite")
    JudgeCache(path)  # the file exists, in WAL mode, before the reader opens it
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")  # a long read transaction: under a rollback journal every writer would wait for it
    assert reader.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 0
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(path, rank, start, out)) for rank in (0, 1)]
    for p in procs:
        p.start()
    start.set()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [(r[0], r[1], r[2]) for r in results] == [(0, 0, "wal"), (1, 0, "wal")]  # no write was skipped
    assert reader.execute("SELECT count(*) FROM verdicts").fetchone()[0] == 0  # the reader's snapshot held
    reader.execute("COMMIT")
    fresh = JudgeCache(path)
    for rank in (0, 1):
        for i in range(N):
            assert fresh.get(f"{rank}-{i}") == Verdict(i % 2 == 0, i / N, f"rank {rank} item {i}")
    assert fresh.misses == 0


def test_a_write_that_cannot_get_the_lock_is_skipped_not_raised(tmp_path):
    path = str(tmp_path / "judge.sqlite")
    cache = JudgeCache(path, busy_timeout_s=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the write lock
    cache.put("k", Verdict(True, 1.0, "kept"))
    assert cache.skipped_writes == 1 and cache.get("k") == Verdict(True, 1.0, "kept")  # in memory still
    blocker.execute("ROLLBACK")
    cache.put("k2", Verdict(False))
    assert cache.skipped_writes == 1 and JudgeCache(path).get("k2") == Verdict(False)
