"""The data card: ``DIR/README.md`` of a curated set, a Hugging Face dataset card with stats and plots.

The YAML header (huggingface_hub ``DatasetCardData``) carries the license, task categories, size category,
the configs pointing at the Parquet shards and the features. The body says what the set is (recipe
verbatim, sources with counts and licenses, code version, dates), the funnel per stage with rejects by
reason, the plots (``DIR/plots/*.png``), known limitations, the contamination checks performed, and a
gallery of kept and rejected samples. Every number is read from ``stats.json`` and the shards.

>>> import shutil
>>> out = shutil.copytree(getfixture("demo_set"), getfixture("tmp_path") / "demo")  # the demo curation
>>> path = write_card(out, quiet=True)
>>> DatasetCard.load(path).data.license
['mit']
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCard, DatasetCardData

import ergo_data
from ergo_data.card import plots as P
from ergo_data.card.gallery import input_rows, measure_rejects, reject_rows, write_gallery
from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import hf_features
from ergo_data.core.vision import BUDGETS, PATCH
from ergo_data.pipeline.outputs import read_parts
from ergo_data.pipeline.recipe import Recipe, build_stage
from ergo_data.pipeline.recipe_record import RESOLVED_FILE, RecipeRecord, read_recipe_record, run_command
from ergo_data.stages.filters import MIN_ZOOM_GAIN, AreaParams

GAMMA = AreaParams.model_fields["max_frac"].default  # r_box's gamma: the area stage's default bound
UNKNOWN_LICENSE = "unknown — state it in the recipe (output.license)"
PLOT_COLUMNS = ("id", "question", "category", "provenance", "source", "image_sha256", "width", "height", "boxes",
                "box_area_frac", "box_short_side_640", "box_short_side_1280", "vision_tokens_full",
                "vision_tokens_640", "vision_tokens_1280", "crop_vision_tokens_1280", "split", "needs_review")


# ---- licenses --------------------------------------------------------------------------------------
LICENSE_PATTERNS = [  # most specific first; the card's metadata uses the Hub's license ids
    (r"\bCC[- ]?BY[- ]?NC[- ]?SA[- ]?v?(\d\.\d)", "cc-by-nc-sa-{}"), (r"\bCC[- ]?BY[- ]?NC[- ]?ND[- ]?v?(\d\.\d)", "cc-by-nc-nd-{}"),
    (r"\bCC[- ]?BY[- ]?NC[- ]?v?(\d\.\d)", "cc-by-nc-{}"), (r"\bCC[- ]?BY[- ]?SA[- ]?v?(\d\.\d)", "cc-by-sa-{}"),
    (r"\bCC[- ]?BY[- ]?ND[- ]?v?(\d\.\d)", "cc-by-nd-{}"), (r"\bCC[- ]?BY[- ]?v?(\d\.\d)", "cc-by-{}"),
    (r"\bCC0\b", "cc0-1.0"), (r"\bApache(?:[- ]License)?[-, ]*(?:Version )?2(?:\.0)?\b", "apache-2.0"),
    (r"\bBSD[- ]3[- ]Clause\b", "bsd-3-clause"), (r"\bBSD[- ]2[- ]Clause\b", "bsd-2-clause"),
    (r"\bLGPL[- ]?v?3(?:\.0)?\b", "lgpl-3.0"), (r"\bGPL[- ]?v?3(?:\.0)?\b", "gpl-3.0"), (r"\bGPL[- ]?v?2(?:\.0)?\b", "gpl-2.0"),
    (r"\bODbL\b", "odbl"), (r"\bPDDL\b", "pddl"), (r"\bMIT\b", "mit"), (r"\bUnlicense\b", "unlicense"),
]
LICENSE_FILES = ("LICENSES.md", "LICENSE", "LICENSE.md", "LICENSE.txt", "README.md", "README.txt", "README")
CODE_ROOT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg")  # a code project's README/LICENSE is not the data's


def find_license_ids(text: str) -> list[str]:
    """Hub license ids named in ``text``, in order of appearance, without repeats.

    >>> find_license_ids("photos: CC-BY-NC-SA-4.0; code: MIT, again MIT")
    ['cc-by-nc-sa-4.0', 'mit']
    """
    spans: list[tuple[int, int, str]] = []
    for pattern, hub_id in LICENSE_PATTERNS:
        for m in re.finditer(pattern, text, flags=re.IGNORECASE if "MIT" not in pattern else 0):
            if not any(s < m.end() and m.start() < e for s, e, _ in spans):
                spans.append((m.start(), m.end(), hub_id.format(*m.groups())))
    return list(dict.fromkeys(i for _, _, i in sorted(spans)))


def _items(text: str) -> list[str]:
    """Markdown-ish paragraphs: a list item with its indented continuation lines is one item."""
    items: list[str] = []
    for line in text.splitlines():
        if items and line[:1].isspace() and line.strip():
            items[-1] += " " + line.strip()
        else:
            items.append(line)
    return items


def license_from_file(path: Path, target: Path) -> list[str]:
    """License ids that ``path`` (a LICENSES.md / LICENSE / README) gives for ``target`` (empty if none)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    if text.startswith("---"):  # a Hugging Face card beside the data: its `license:` field
        try:
            head = yaml.safe_load(text.split("---", 2)[1]) or {}
            lic = head.get("license") if isinstance(head, dict) else None
            if lic:
                return [str(x) for x in (lic if isinstance(lic, list) else [lic])]
        except (yaml.YAMLError, IndexError):
            pass
    rel = target.relative_to(path.parent).as_posix() if target != path.parent else ""
    mentions = [it for it in _items(text) if f"{rel}/" in it or f"`{rel}`" in it or f"{rel}:" in it] if rel else []
    ids = find_license_ids(" ".join(mentions))
    if ids:
        return ids
    if path.name.upper().startswith("LICENSE") and not path.name.upper().startswith("LICENSES"):
        return find_license_ids(text)  # one LICENSE file covers its whole folder
    folder = target if target.is_dir() else target.parent
    if path.parent == folder and not mentions:  # a README beside the source, not a per-item list
        ids = find_license_ids(text)
        return ids if len(ids) == 1 else []
    return []  # a list above the source that does not give this source a license: do not guess


def find_source_license(start: Path, max_up: int = 3) -> tuple[list[str], Path | None]:
    """Walk from ``start`` (a source's folder or file) up to ``max_up`` parents for a license statement.

    Stops below a code project's root (its README/LICENSE are the code's) and at a git repository's root.

    >>> find_source_license(Path("examples/vstar").resolve())[0]
    ['mit']
    """
    target = start.resolve()
    d = target if target.is_dir() else target.parent
    for _ in range(max_up + 1):
        if any((d / m).exists() for m in CODE_ROOT_MARKERS):
            break
        for name in LICENSE_FILES:
            if (d / name).is_file():
                ids = license_from_file(d / name, target)
                if ids:
                    return ids, d / name
        if (d / ".git").exists() or d.parent == d:
            break
        d = d.parent
    return [], None


@dataclass
class SourceInfo:
    name: str
    type: str
    path: str
    licenses: list[str]
    evidence: str  # where the license was read, or why it is unknown
    counts: dict[str, Any]


def source_infos(recipe: Recipe | None, stats: dict[str, Any], image_dirs: dict[str, Path]) -> list[SourceInfo]:
    """Each source of the run with its counts (stats.json) and its license (read beside or above its path)."""
    specs = {(s.get("name") or s["type"]): s for s in (recipe.sources if recipe else [])}
    out = []
    for name, counts in stats["sources"].items():
        spec = specs.get(name, {})
        candidates = [Path(spec["path"]).expanduser()] if spec.get("path") else []
        candidates += [image_dirs[name]] if name in image_dirs else []
        ids, where = [], None
        for c in candidates:
            if c.exists():
                ids, where = find_source_license(c)
                if ids:
                    break
        evidence = _display_path(where) if where else "no LICENSES.md / LICENSE / README beside or above the source"
        out.append(SourceInfo(name, spec.get("type", "?"), spec.get("path", "?"), ids, evidence, counts))
    return out


def _display_path(p: Path) -> str:
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)


# ---- run facts -----------------------------------------------------------------------------------
def code_version() -> dict[str, Any]:
    """``ergo_data.__version__`` and, in a git checkout, the commit and whether the tree had changes."""
    root = Path(ergo_data.__file__).resolve().parent.parent
    info: dict[str, Any] = {"version": ergo_data.__version__, "commit": None, "dirty": None}
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=False, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                check=False, capture_output=True, text=True, timeout=10)
            info["dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def visibility_band(recipe: Recipe | None) -> P.Band | None:
    """The first ``visibility`` stage's band (its defaults filled in), if the recipe has one."""
    for spec in recipe.stages if recipe else []:
        if spec.get("type") == "visibility":
            try:
                p = build_stage(spec).params
            except (RecipeError, KeyError):
                return None
            return P.Band(p.min_side_px, p.max_side_px, p.max_pixels, p.min_zoom_gain)
    return None


def size_category(n: int) -> str:
    """The Hub's size category for ``n`` rows.

    >>> size_category(9), size_category(12_000)
    ('n<1K', '10K<n<100K')
    """
    bounds = [(10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
              (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B")]
    return next((label for bound, label in bounds if n < bound), "n>10B")


# ---- writing ---------------------------------------------------------------------------------------
def write_card(out_dir: str | Path, quiet: bool = False, n_kept: int = 8, n_per_reason: int = 4) -> Path:
    """Write ``DIR/README.md`` (and ``DIR/plots/``) for the curated set in ``out_dir``; return its path.

    Raises FileNotFoundError when ``out_dir`` has no stats.json (not the output of ``ergo run``), ValueError
    when stats.json or a shard cannot be read.
    """
    from ergo_data.pipeline.progress import Progress

    out = Path(out_dir)
    stats_path = out / "stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"{out}: no stats.json - is it the output folder of `ergo run`?")
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{stats_path} is not valid JSON ({e}): rerun `ergo run` to rewrite it") from None
    record = read_recipe_record(out)
    recipe = record.recipe
    kept = read_parts(out / "data", "*.parquet")
    rejects = reject_rows(out)
    cols = {c: kept.column(c).to_pylist() for c in PLOT_COLUMNS if c in kept.column_names}
    image_dirs = _image_dirs(out, kept, rejects)
    sources = source_infos(recipe, stats, image_dirs)
    band = visibility_band(recipe)
    seed = recipe.seed if recipe else 0
    draw_plots = recipe.output.plots if recipe else True
    folder = out / "plots"
    made: list[P.Plot] = []
    sheets = []
    measured: dict[str, Any] = {"rows": [], "of": 0, "available": 0}
    with Progress(quiet=quiet) as prog:
        if draw_plots:
            measured = measure_rejects(out, rejects, seed, prog)
            made = make_plots(out, cols, stats, rejects, measured["rows"], band, folder, prog)
            max_pixels = band.max_pixels if band else BUDGETS[1280]
            tokens = max_pixels // (PATCH * PATCH)
            sheets = write_gallery(out, folder, kept, rejects, seed, max_pixels, f"@{tokens} tokens",
                                   n_kept, n_per_reason, prog)
        else:
            for old in folder.glob("*.png"):
                old.unlink()  # plots of an earlier run would contradict this card
    facts = {"stats": stats, "record": record, "recipe": recipe,
             "sources": sources, "cols": cols, "n_kept": kept.num_rows, "rejects": rejects, "plots": made,
             "sheets": sheets, "measured": measured, "band": band, "gamma": GAMMA, "seed": seed,
             "draw_plots": draw_plots, "version": code_version(), "curated_at": _mtime(stats_path),
             "written_at": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
             "embedded": _embedded_count(kept)}
    card = DatasetCard(f"---\n{card_data(stats, sources, recipe, out).to_yaml()}\n---\n\n{render_body(facts)}")
    path = out / "README.md"
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(str(card), encoding="utf-8")
    os.replace(tmp, path)
    return path


def card_data(stats: dict[str, Any], sources: list[SourceInfo], recipe: Recipe | None, out: Path) -> DatasetCardData:
    """The YAML header: license, task categories, size category, configs -> shards, features."""
    if recipe and recipe.output.license:
        licenses = [recipe.output.license]
    else:
        licenses = list(dict.fromkeys(i for s in sources for i in (s.licenses or ["unknown"]))) or ["unknown"]
    shards = stats["files"]["data"]
    schema = pq.read_schema(out / shards[0]) if shards and (out / shards[0]).is_file() else None
    from datasets import DatasetInfo

    features = DatasetInfo(features=hf_features(schema))._to_yaml_dict()["features"]
    kept = stats["totals"]["kept"]
    return DatasetCardData(
        license=licenses, task_categories=["visual-question-answering"], language=["en"],
        size_categories=[size_category(kept)], pretty_name=stats["name"],
        tags=["ergo", "high-resolution", "visual-grounding", "zoom"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
        dataset_info={"features": features, "splits": [{"name": "train", "num_examples": kept}]},
    )


def make_plots(out: Path, cols: dict[str, list], stats: dict[str, Any], rejects: list[dict[str, Any]],
               measured: list[dict[str, Any]], band: P.Band | None, folder: Path, prog=None) -> list[P.Plot]:
    """All plots of the card into ``folder`` (stale ones removed); those with no data are left out."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        if not old.name.startswith("gallery-"):
            old.unlink()
    labels_path = out / "labels.parquet"
    labels = pq.read_table(labels_path).to_pylist() if labels_path.is_file() else []
    kept_by_id = {}
    if labels:
        wanted = {lab["id"] for lab in labels}
        kept_by_id = {r["id"]: r for r in read_parts(out / "data", "*.parquet").to_pylist() if r["id"] in wanted}
    jobs = [lambda: P.plot_per_source(stats["sources"], rejects, folder),
            lambda: P.plot_area(cols, measured, GAMMA, folder),
            lambda: P.plot_short_side(cols, measured, band, folder),
            lambda: P.plot_zoom_gain(cols, measured, band, folder),
            lambda: P.plot_tokens(cols, folder),
            lambda: P.plot_questions(cols, folder),
            lambda: P.plot_resolution(cols, folder),
            lambda: P.plot_labels(labels, kept_by_id, folder)]
    task = prog.task("plots", total=len(jobs)) if prog else None
    made = []
    for job in jobs:
        p = job()
        if p is not None:
            made.append(p)
        if prog:
            prog.advance(task, 1)
    return made


def _image_dirs(out: Path, kept, rejects: list[dict[str, Any]]) -> dict[str, Path]:
    """Per source, the common folder of its images (kept rows, else rejected rows in ``.work/inputs``)."""
    paths: dict[str, list[str]] = {}
    if kept.num_rows:
        image_paths = pc.struct_field(kept.column("image"), "path").to_pylist()
        for src, path in zip(kept.column("source").to_pylist(), image_paths):
            if path:
                paths.setdefault(src, []).append(path)
    missing = {r["source"] for r in rejects} - set(paths)
    if missing:
        ids = [r["id"] for r in rejects if r["source"] in missing]
        for row in input_rows(out, ids[:1000]).values():
            if (row.get("image") or {}).get("path"):
                paths.setdefault(row["source"], []).append(row["image"]["path"])
    out_dirs = {}
    for s, ps in paths.items():
        try:
            out_dirs[s] = Path(os.path.commonpath([str(Path(p).parent) for p in ps]))
        except ValueError:  # relative and absolute paths mixed: no common folder
            continue
    return out_dirs


def _embedded_count(kept) -> int:
    """Rows whose image bytes are in the shards (without pulling the bytes into Python)."""
    if not kept.num_rows:
        return 0
    return int(pc.sum(pc.is_valid(pc.struct_field(kept.column("image"), "bytes"))).as_py() or 0)


def _mtime(path: Path) -> str:
    t = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return t.replace(microsecond=0).isoformat()


# ---- the body ----------------------------------------------------------------------------------------
def md_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (pipes in cells escaped).

    >>> print(md_table(["a", "b"], [[1, "x|y"]]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows])


def fenced(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it (verbatim, never broken)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def reasons_text(rejected: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(rejected.items())) or "-"


def render_body(f: dict[str, Any]) -> str:
    """The card's Markdown body from the facts gathered by :func:`write_card`."""
    st = f["stats"]
    t = st["totals"]
    rec = f["recipe"]
    parts = [f"# {st['name']}", ""]
    if rec and rec.description:
        parts += [rec.description.strip(), ""]
    parts += [(f"**{t['kept']} samples kept** of {t['inputs']} inputs from {len(st['sources'])} sources "
              f"({t['rejected']} rejected, each with a reason in `rejects/`). Per source, inputs = kept + rejected: "
              f"**{'holds' if st['invariant']['ok'] else 'BROKEN'}**. All figures: [stats.json](stats.json)."), ""]
    parts += _what_section(f) + _funnel_section(st) + _plots_section(f) + _limitations_section(f)
    parts += _contamination_section(st) + _gallery_section(f) + _reproduce_section(st)
    return "\n".join(parts).rstrip() + "\n"


def _what_section(f: dict[str, Any]) -> list[str]:
    st, v, rec = f["stats"], f["version"], f["recipe"]
    commit = f"git `{v['commit'][:12]}`" + (" (with uncommitted changes)" if v["dirty"] else "") if v["commit"] \
        else "not a git checkout"
    out = ["## What this set is", "",
           ("ERGO-style visual QA: a high-resolution image, a question, an answer, and the task-relevant region "
           "(`boxes`, absolute pixels xyxy on the original image). The model sees a downsampled view first, "
           "must find the region and zoom; the columns `box_short_side_640/1280` and `*vision_tokens*` measure that."),
           "", f"- code: ergo_data {v['version']}, {commit}",
           f"- curated (stats.json written): {f['curated_at']}; card written: {f['written_at']}",
           (f"- seed: {f['seed']}; shards: {len(st['files']['data'])} in `data/` ({f['n_kept']} rows), "
           f"{len(st['files']['rejects'])} in `rejects/`")]
    splits = {}
    for s in f["cols"].get("split", []):
        splits[s or "(none)"] = splits.get(s or "(none)", 0) + 1
    if splits:
        out.append("- `split` column (assigned per image): " + ", ".join(f"{k} {n}" for k, n in sorted(splits.items())))
    if rec and rec.output.license:
        out.append(f"- license of the set (recipe `output.license`): **{rec.output.license}**")
    out += ["", "### Sources", "", md_table(
        ["source", "type", "path", "license", "license read from", "inputs", "kept", "rejected",
         "inputs = kept + rejected"],
        [[s.name, s.type, f"`{s.path}`", ", ".join(s.licenses) or UNKNOWN_LICENSE, s.evidence, s.counts["inputs"],
          s.counts["kept"], s.counts["rejected"], "ok" if s.counts["ok"] else "BROKEN"] for s in f["sources"]]), ""]
    return out + _recipe_section(f["record"])


def _recipe_section(record: RecipeRecord) -> list[str]:
    out = ["### Recipe", ""]
    if record.file:
        out += ["The command that ran (the `--set` overrides exactly as given; also in `recipe.json`):", "",
                fenced(run_command(record), "bash"), ""]
    if record.file_text is not None:
        what = f"The recipe file `{record.file}` as given:" if record.file else (
            f"The recipe as run (`{RESOLVED_FILE}`, written by an older version: `--set` overrides in its last comment):")
        out += [what, "", fenced(record.file_text, "yaml"), ""]
    if record.text is not None:
        resolved = [(f"The recipe as run, overrides applied (`{RESOLVED_FILE}`; `ergo run {RESOLVED_FILE} --out DIR` "
                     "runs it again):"), "", fenced(record.text, "yaml"), ""]
        out += resolved if record.file_text is None else (
            ["<details><summary>The recipe as run, overrides applied (recipe.yaml)</summary>", ""] + resolved[2:]
            + ["</details>", ""])
    if record.problem:
        out += [f"> {record.problem}", ""]
    return out


def _funnel_section(st: dict[str, Any]) -> list[str]:
    rows = []
    for s in st["stages"]:
        n_rej = sum(s["rejected"].values())
        rows.append([s["stage"], s["in"], s["out"], n_rej, reasons_text(s["rejected"]),
                     "ok" if s["in"] == s["out"] + n_rej else "MISMATCH", f"{s['seconds']:.2f}"])
    t = st["totals"]
    check = t["inputs"] == t["kept"] + t["rejected"]
    return ["## Funnel", "", ("Each stage's rows in and out, and the rejects by reason (`rejects/` holds every "
            "rejected id with stage, reason and a detail sentence)."), "",
            md_table(["stage", "in", "out", "rejected", "rejected by reason", "in = out + rejected", "seconds"], rows),
            "", (f"Totals: inputs {t['inputs']} = kept {t['kept']} + rejected {t['rejected']}: "
            f"**{'ok' if check else 'BROKEN'}**."), ""]


def _plots_section(f: dict[str, Any]) -> list[str]:
    if not f["draw_plots"]:
        return ["## Plots", "", "Not drawn: the recipe sets `output.plots: false`.", ""]
    m = f["measured"]
    out = ["## Plots", ""]
    if m["of"]:
        out += [(f"Rejected samples appear beside the kept ones where they could be measured: {len(m['rows'])} of "
                f"{m['of']} rejects past the sources (drawn: {m['drawn']}; rows in `.work/inputs`: {m['available']}; "
                "measured from the image header)."), ""]
    for p in f["plots"]:
        out += [f"### {p.title}", "", f"![{p.title}](plots/{p.path.name})", ""] + [f"- {n}" for n in p.notes] + [""]
    return out


def _limitations_section(f: dict[str, Any]) -> list[str]:
    st, cols, n = f["stats"], f["cols"], f["n_kept"]
    lim = []
    if n < 1000:
        lim.append(f"Small set ({n} samples): percentages and histograms are indicative only.")
    unknown = [s.name for s in f["sources"] if not s.licenses]
    if unknown and not (f["recipe"] and f["recipe"].output.license):
        lim.append(f"License unknown for {', '.join(unknown)}: state it in the recipe (`output.license`) before sharing.")
    if st.get("needs_review"):
        lim.append(f"{st['needs_review']} samples are flagged `needs_review` (low-confidence generation).")
    no_cat = sum(c is None for c in cols.get("category", []))
    if no_cat:
        lim.append(f"{no_cat} samples have no `category`.")
    multi = sum(len(b or []) > 1 for b in cols.get("boxes", []))
    if multi:
        lim.append(f"{multi} samples have several boxes: ERGO zooms once, so their union is the region.")
    box_src: dict[str, int] = {}
    for bs in cols.get("boxes", []):
        for b in bs or []:
            box_src[b["source"]] = box_src.get(b["source"], 0) + 1
    if box_src:
        lim.append("Boxes by provenance: " + ", ".join(f"{k} {v}" for k, v in sorted(box_src.items()))
                   + "; none of them was re-checked by a person unless its provenance is `human`.")
    if n and f["embedded"] < n:
        lim.append(f"{n - f['embedded']} of {n} rows reference their image by path (`image.path`), not embedded: the "
                   "shards are not self-contained (`ergo run --embed-images` embeds them).")
    if not any("summary" in s and "eval_set" in s["summary"] for s in st["stages"]):
        lim.append("Not checked against any evaluation set (see below).")
    if f["band"] is None:
        lim.append("No `visibility` stage: nothing guarantees the region needs zoom at the budget.")
    low = int((P.kept_zoom_gains(cols) < MIN_ZOOM_GAIN).sum())
    if low:
        lim.append(f"{low} of {n} samples have a zoom gain under {MIN_ZOOM_GAIN:g}: their full-resolution crop shows "
                   "little more than the coarse view (`visibility.min_zoom_gain`, docs/generation.md).")
    if not st["invariant"]["ok"]:
        lim.append("**The per-source invariant inputs = kept + rejected is broken: some samples are unaccounted for.**")
    return ["## Known limitations", ""] + [f"- {x}" for x in lim] + [""]


def _contamination_section(st: dict[str, Any]) -> list[str]:
    out = ["## Contamination checks", ""]
    checks = [s for s in st["stages"] if "eval_set" in (s.get("summary") or {})]
    for s in checks:
        sm = s["summary"]
        out.append(f"- `{s['stage']}` against **{sm['eval_set']}** ({sm.get('reference_images', '?')} reference "
                   f"images in `{sm.get('reference', '?')}`, pHash Hamming distance <= {sm.get('max_distance', '?')}): "
                   f"{sum(s['rejected'].values())} matches removed ({reasons_text(s['rejected'])})")
    if not checks:
        out.append("None performed: the recipe has no `decontaminate` stage, so no evaluation set was compared.")
    for s in st["stages"]:
        if s["stage"] == "dedup":
            out.append(f"- within the set, `dedup` removed {sum(s['rejected'].values())} near-duplicate samples")
    return out + [""]


def _gallery_section(f: dict[str, Any]) -> list[str]:
    if not f["sheets"]:
        return []
    out = ["## Gallery", "", ("Each tile: the coarse view at the budget with the box drawn | the box region as that "
           "view holds it (enlarged, nearest neighbour) | the crop at full resolution; question and answer below. "
           f"Seeded random draws (seed {f['seed']}); `ergo show DIR --id ID` renders one sample."), ""]
    for sh in f["sheets"]:
        out += [f"### {sh.title} ({len(sh.ids)} of {sh.of_total})", "", f"![{sh.title}](plots/{sh.path.name})", "",
                "ids: " + ", ".join(f"`{i}`" for i in sh.ids), ""]
    return out


def _reproduce_section(st: dict[str, Any]) -> list[str]:
    return ["## Use and reproduce", "", fenced(
        f"# load\nimport datasets\nds = datasets.load_dataset(\"parquet\", data_files=\"DIR/data/*.parquet\", "
        f"split=\"train\")\n# rebuild ({st['name']})\nergo run recipe.yaml --out DIR\nergo card DIR\n"
        "ergo show DIR --id ID", "text"), ""]
