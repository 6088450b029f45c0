"""The bad-input corpus through the real pipeline: every item ends kept-and-correct or rejected with a
clear reason naming it; the run goes on; per source, inputs = kept + rejected.

The corpus (tests/data/make_bad_inputs.py) is built into a temporary folder: about 60 small files.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import parse_recipe
from tests.data.make_bad_inputs import build_corpus


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    recipe, cases = build_corpus(root / "corpus")
    stats = run_pipeline(parse_recipe(recipe), root / "out", quiet=True)

    def read(sub):
        return pq.read_table(sorted((root / "out" / sub).glob("*.parquet"))).to_pylist()
    return cases, stats, read("data"), read("rejects")


def test_corpus_is_big_enough(corpus_run):
    cases, *_ = corpus_run
    assert len(cases) >= 25
    assert sum(c.outcome != "kept" for c in cases) >= 25


def test_every_case_ends_as_expected(corpus_run):
    cases, _, kept, rejects = corpus_run
    kept_by_id = {r["id"]: r for r in kept}
    rejects_by_id: dict[str, list[dict]] = {}
    for r in rejects:
        rejects_by_id.setdefault(r["id"], []).append(r)
    problems = []
    for c in cases:
        if c.outcome == "kept":
            row = kept_by_id.get(c.id)
            if row is None:
                problems.append(f"{c.id}: expected kept, got {rejects_by_id.get(c.id)}")
                continue
            if (row["width"], row["height"]) != c.size:
                problems.append(f"{c.id}: size {(row['width'], row['height'])} != {c.size}")
            if c.box is not None:
                b = row["boxes"][0]
                if (b["x1"], b["y1"], b["x2"], b["y2"]) != pytest.approx(c.box):
                    problems.append(f"{c.id}: box {b} != {c.box}")
            if len(row["image_sha256"]) != 64 or len(row["image_phash"]) != 16:
                problems.append(f"{c.id}: sha256/pHash not recorded")
            warning = json.loads(row["provenance"]).get("decode_warning")
            if (warning is not None) != c.id.endswith("extraneous_bytes_before_eoi"):
                problems.append(f"{c.id}: unexpected decode_warning {warning!r} in provenance")
        else:
            got = [r for r in rejects_by_id.get(c.id, []) if r["reason"] == c.outcome]
            if len(got) != 1:
                problems.append(f"{c.id}: expected one reject {c.outcome!r} by {c.stage}, got "
                                f"{rejects_by_id.get(c.id)} (kept: {c.id in kept_by_id})")
                continue
            r = got[0]
            if r["stage"] != c.stage:
                problems.append(f"{c.id}: rejected by {r['stage']!r}, expected {c.stage!r}")
            if c.detail_has not in r["detail"]:
                problems.append(f"{c.id}: detail {r['detail']!r} does not contain {c.detail_has!r}")
    assert not problems, "\n".join(problems)


def test_nothing_lost_nothing_extra(corpus_run):
    cases, stats, kept, rejects = corpus_run
    expected = Counter(c.id for c in cases)
    got = Counter(r["id"] for r in kept) + Counter(r["id"] for r in rejects)
    assert got == expected
    assert stats["invariant"]["ok"] is True
    for name, s in stats["sources"].items():
        assert s["inputs"] == s["kept"] + s["rejected"], name
    assert stats["totals"]["inputs"] == len(cases)
    assert stats["totals"]["kept"] == sum(c.outcome == "kept" for c in cases)


def test_reject_reasons_are_codes_and_details_are_sentences(corpus_run):
    _, stats, _, rejects = corpus_run
    for r in rejects:
        assert r["reason"].replace("_", "").isalnum() and r["reason"].islower(), r
        assert len(r["detail"]) > 10 and r["source"] in stats["sources"], r
    decode = next(s for s in stats["stages"] if s["stage"] == "decode")
    assert decode["in"] - decode["out"] == sum(decode["rejected"].values())
    assert {"truncated_image", "empty_file", "decompression_bomb", "unreadable_image", "corrupt_image",
            "image_missing", "extreme_aspect_ratio"} <= set(decode["rejected"])
