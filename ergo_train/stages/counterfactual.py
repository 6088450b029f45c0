"""Region counterfactuals: does the answer truly depend on the region, and does it need the zoom?

For each sample a judge (``vlm`` or ``ocr``: one that looks at images) answers from four views of the image:

- ``full``: the whole image at the budget (what the policy sees in turn 1);
- ``low``: the whole image downsampled further (``low_max_pixels``);
- ``crop``: the region (union of the sample's boxes) at full resolution, resized to the budget (turn 2);
- ``masked``: the whole image at the budget with the region painted over in the image's mean colour.

``depends_on_region`` = answerable from the crop and not from the masked image; ``needs_zoom`` = answerable
from the crop and not from the full image at the budget. The summary reports the fraction of each: the
filter that separates "needs zoom" items from items answerable at low resolution. Also a pipeline stage:

    stages:
      - type: counterfactual
        judge: {type: ocr}          # or {type: vlm, model: /path/to/Qwen2.5-VL-72B-Instruct}
        keep: needs_zoom            # all (annotate only) | depends_on_region | needs_zoom

>>> from PIL import Image
>>> views = counterfactual_views(Image.new("RGB", (4000, 3000), "white"), Box(100, 100, 400, 300),
...                              max_pixels=1280 * 28 * 28, low_max_pixels=256 * 28 * 28)
>>> {k: v.size for k, v in views.items()}
{'full': (1148, 840), 'low': (504, 364), 'crop': (308, 196), 'masked': (1148, 840)}
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageStat

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import RecipeError
from ergo_data.core.imageio import ImageSource
from ergo_data.core.vision import budget_pixels
from ergo_data.pipeline.contract import Params, Reject, RowStage
from ergo_data.pipeline.registry import stage_registry
from ergo_train.rewards.judges import (
    JUDGES,
    Judge,
    JudgeCache,
    JudgeError,
    RegionQuery,
    build_judge,
    judge_regions,
)
from ergo_train.rollout.zoom import fit_aspect, region_of

VIEWS = ("full", "low", "crop", "masked")
DEFAULT_MAX_PIXELS = budget_pixels(1280)
DEFAULT_LOW_MAX_PIXELS = budget_pixels(256)


def counterfactual_views(image: Image.Image | ImageSource, box: Box, max_pixels: int = DEFAULT_MAX_PIXELS,
                         low_max_pixels: int = DEFAULT_LOW_MAX_PIXELS) -> dict[str, Image.Image]:
    """The four views of ``image`` (a PIL image or an ``ImageSource``) for the region ``box`` (canonical,
    on the original image). From a source, no view needs the full resolution except the crop's rows."""
    src = ImageSource.open(image)
    coarse, crop = src.views(max_pixels, fit_aspect(box, src.size))
    full, size = coarse.to_pil(), src.size
    low = src.coarse(low_max_pixels)
    masked = full.copy()
    x1, y1, x2, y2 = box.to_model(full.size, size)
    fill = tuple(round(c) for c in ImageStat.Stat(full).mean[:3])
    # one pixel outward so no edge of the region survives the resize
    ImageDraw.Draw(masked).rectangle([math.floor(x1) - 1, math.floor(y1) - 1, math.ceil(x2), math.ceil(y2)], fill=fill)
    return {"full": full, "low": low, "crop": Image.fromarray(crop, "RGB"), "masked": masked}


def judge_counterfactuals(judge: Judge, row: Mapping[str, Any], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                          low_max_pixels: int = DEFAULT_LOW_MAX_PIXELS,
                          cache: JudgeCache | None = None) -> dict[str, Any]:
    """The judge's verdict on each view of one sample, as ``cf_*`` columns (batched: one judge call)."""
    if not judge.needs_image:
        raise JudgeError(f"judge {judge.name!r} does not look at images: counterfactual views need vlm or ocr")
    box = region_of(row)
    views = counterfactual_views(ImageSource.open(row["image"]), box, max_pixels, low_max_pixels)
    queries = [RegionQuery(image=row["image"], box=box, question=row["question"], options=list(row.get("options") or []),
                           answer=row["answer"], answer_letter=row.get("answer_letter"), sample_id=row.get("id"),
                           image_sha256=row.get("image_sha256"), view=f"{name}@{max_pixels}/{low_max_pixels}",
                           crop=views[name]) for name in VIEWS]
    verdicts = dict(zip(VIEWS, judge_regions(judge, queries, cache)))
    out: dict[str, Any] = {}
    for name in VIEWS:
        out[f"cf_{name}"] = verdicts[name].correct
        out[f"cf_{name}_confidence"] = verdicts[name].confidence
    out["cf_depends_on_region"] = out["cf_crop"] and not out["cf_masked"]
    out["cf_needs_zoom"] = out["cf_crop"] and not out["cf_full"]
    return out


def summarize(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Fractions over the judged samples: each view answerable, depends on the region, needs zoom.

    >>> summarize([{"cf_full": False, "cf_low": False, "cf_crop": True, "cf_masked": False,
    ...             "cf_depends_on_region": True, "cf_needs_zoom": True}])["fraction_needs_zoom"]
    1.0
    """
    n = len(results)
    names = {**{f"cf_{v}": f"fraction_answerable_{v}" for v in VIEWS},
             "cf_depends_on_region": "fraction_depends_on_region", "cf_needs_zoom": "fraction_needs_zoom"}
    out: dict[str, Any] = {"n": n}
    for key, name in names.items():
        out[name] = sum(bool(r[key]) for r in results) / n if n else None
    return out


def run_counterfactuals(judge: Judge, rows: Iterable[Mapping[str, Any]], *, max_pixels: int = DEFAULT_MAX_PIXELS,
                        low_max_pixels: int = DEFAULT_LOW_MAX_PIXELS,
                        cache: JudgeCache | None = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """``(results, skipped)``: one result per judged sample (id + ``cf_*``), and the samples left out with why."""
    results, skipped = [], []
    for row in rows:
        try:
            results.append({"id": row.get("id"), **judge_counterfactuals(
                judge, row, max_pixels=max_pixels, low_max_pixels=low_max_pixels, cache=cache)})
        except (BoxError, JudgeError, OSError, ValueError) as e:
            skipped.append({"id": str(row.get("id")), "reason": str(e)})
    return results, skipped


def write_counterfactual_report(out_dir, results: Sequence[Mapping[str, Any]], skipped: Sequence[Mapping[str, str]],
                                inputs: Mapping[str, str]):
    """``counterfactual.md``, ``counterfactual.json`` (summary + per sample) into ``out_dir``; returns the .md path."""
    import json
    from pathlib import Path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    (out / "counterfactual.json").write_text(json.dumps(
        {"inputs": dict(inputs), "summary": summary, "samples": list(results), "skipped": list(skipped)},
        indent=2, default=str), encoding="utf-8")
    lines = ["# Region counterfactuals", ""] + [f"- {k}: `{v}`" for k, v in inputs.items()]
    lines += ["", f"n = {summary['n']} judged, {len(skipped)} left out", "", "| fraction | value |", "|---|---|"]
    lines += [f"| {k} | {'n/a' if v is None else f'{v:.3f}'} |" for k, v in summary.items() if k != "n"]
    lines += ["", "| id | full | low | crop | masked | depends on region | needs zoom |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['id']} | " + " | ".join("yes" if r[k] else "no" for k in
                     ("cf_full", "cf_low", "cf_crop", "cf_masked", "cf_depends_on_region", "cf_needs_zoom")) + " |")
    lines += [f"- left out {s['id']}: {s['reason']}" for s in skipped]
    path = out / "counterfactual.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---- the pipeline stage ---------------------------------------------------------------------------
class CounterfactualParams(Params):
    judge: dict[str, Any] | str  # {type: vlm, model: ...} or {type: ocr, ...}
    max_pixels: int = DEFAULT_MAX_PIXELS  # the budget of the full view and of the crop
    low_max_pixels: int = DEFAULT_LOW_MAX_PIXELS  # the downsampled view
    keep: Literal["all", "depends_on_region", "needs_zoom"] = "all"
    cache: str | None = None  # SQLite file for verdicts (re-runs judge nothing twice)


@stage_registry.register("counterfactual")
class CounterfactualStage(RowStage):
    """Judge each sample's region counterfactuals (full/low/crop/masked); add cf_* columns, optionally filter."""

    Params = CounterfactualParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._judge: Judge | None = None  # built lazily in the worker that runs the stage
        self._cache: JudgeCache | None = None

    def check_dependencies(self) -> None:
        spec = self.params.judge
        kind = spec if isinstance(spec, str) else spec.get("type")
        if kind not in JUDGES:
            raise RecipeError(f"stage 'counterfactual': unknown judge {kind!r}; valid: {', '.join(sorted(JUDGES))}")
        if not JUDGES[kind].needs_image:
            raise RecipeError(f"stage 'counterfactual': judge {kind!r} does not look at images; use vlm or ocr")
        if self.params.low_max_pixels >= self.params.max_pixels:
            raise RecipeError("stage 'counterfactual': low_max_pixels must be below max_pixels")

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        p = self.params
        if self._judge is None:
            self._judge = build_judge(p.judge)
            self._cache = JudgeCache(p.cache) if p.cache else JudgeCache()
        for row in rows:
            if not row.get("boxes"):
                if p.keep == "all":
                    yield {**row, **dict.fromkeys(_COLUMNS)}
                else:
                    yield Reject(row, "no_region", "the sample has no boxes to judge")
                continue
            try:
                cf = judge_counterfactuals(self._judge, row, max_pixels=p.max_pixels, low_max_pixels=p.low_max_pixels,
                                           cache=self._cache)
            except (OSError, ValueError) as e:  # unreadable image, bad box, judge refusing the item
                yield Reject(row, "counterfactual_failed", str(e))
                continue
            reason = _reject_reason(cf, p.keep)
            yield Reject(row, reason[0], reason[1]) if reason else {**row, **cf}


_COLUMNS = [f"cf_{v}" for v in VIEWS] + [f"cf_{v}_confidence" for v in VIEWS] + ["cf_depends_on_region",
                                                                                    "cf_needs_zoom"]


def _reject_reason(cf: Mapping[str, Any], keep: str) -> tuple[str, str] | None:
    if keep == "all":
        return None
    if not cf["cf_crop"]:
        return "region_not_answerable", "the judge cannot answer from the region's crop"
    if keep == "depends_on_region" and cf["cf_masked"]:
        return "answerable_without_region", "the judge answers with the region masked out"
    if keep == "needs_zoom" and cf["cf_full"]:
        return "answerable_without_zoom", "the judge answers from the whole image at the budget"
    return None
