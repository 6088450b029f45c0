"""Sample galleries for the data card, and one sample's views for ``ergo show``.

A gallery tile puts three panels side by side: the coarse view at the budget with the (union) box drawn,
the box region as the coarse view holds it (enlarged nearest-neighbour: what the model can read without
zooming) and the crop at full resolution (the turn-2 view), with question and answer as caption. A sample
that cannot be drawn (missing or broken image, bad box, row no longer on disk) gets a placeholder tile
saying why, so every drawn id shows up.

>>> tile = placeholder_tile("examples/x", "image_missing", "image file not found: /x.jpg")
>>> tile.width == tile_width()
True
"""

from __future__ import annotations

import random
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

from ergo_data.core.boxes import Box, Size, rotate_box_with_exif
from ergo_data.core.imageio import DecodeError, ImageSource, decode_coarse, read_info
from ergo_data.core.vision import BUDGETS, box_size_at_budget, derived_columns, vision_tokens, zoom_gain
from ergo_data.pipeline.outputs import read_parts
from ergo_data.stages.decode import boxes_frame, load_image_bytes

PANEL = 200  # display height of one panel in a gallery tile (pixels)
CAPTION_LINES = 5
LINE_PX = 17
PAD = 6
BOX_COLOUR = (255, 40, 40)


@lru_cache(maxsize=8)
def font(size: int = 13) -> ImageFont.FreeTypeFont:
    """DejaVu Sans from matplotlib's bundled fonts (covers accents and most symbols)."""
    from matplotlib import font_manager

    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


# ---- finding rows --------------------------------------------------------------------------------
def kept_rows(out_dir: Path) -> list[dict[str, Any]]:
    """The curated samples (``data/*.parquet``) as dicts."""
    return read_parts(Path(out_dir) / "data", "*.parquet").to_pylist()


def reject_rows(out_dir: Path) -> list[dict[str, Any]]:
    """``rejects/*.parquet`` as dicts (``id, source, stage, reason, detail``)."""
    return read_parts(Path(out_dir) / "rejects", "*.parquet").to_pylist()


def input_rows(out_dir: Path, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Rows as the sources emitted them (``.work/inputs``), looked up by id; absent ids are left out.

    Rejected samples exist only there (``rejects/`` keeps id, stage and reason). Source-stage rejects and
    runs whose ``.work`` was removed have no row.
    """
    wanted = sorted(set(ids))
    found: dict[str, dict[str, Any]] = {}
    if not wanted:
        return found
    for f in sorted((Path(out_dir) / ".work" / "inputs").glob("part-*.parquet")):
        for r in pq.read_table(f, filters=[("id", "in", wanted)]).to_pylist():
            found[r["id"]] = r
    return found


def find_sample(out_dir: Path, sample_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``(row, reject or None)`` for ``sample_id``: a kept row, or a rejected one from ``.work/inputs``.

    Raises KeyError naming the id and where it was looked for.
    """
    out = Path(out_dir)
    for r in kept_rows(out):
        if r["id"] == sample_id:
            return r, None
    reject = next((r for r in reject_rows(out) if r["id"] == sample_id), None)
    row = input_rows(out, [sample_id]).get(sample_id)
    if row is None:
        where = f"rejected by {reject['stage']} ({reject['reason']}), but its row is not in .work/inputs" \
            if reject else "not in data/, rejects/ or .work/inputs"
        raise KeyError(f"sample {sample_id!r}: {where} of {out}")
    return row, reject


# ---- one sample's images ---------------------------------------------------------------------------
@dataclass
class Views:
    """What the model sees of one sample at a budget, plus the box on the original image."""

    size: Size  # original (width, height) as displayed
    coarse: Image.Image  # turn-1 view at the budget
    box: Box | None  # union of the boxes, displayed frame, clamped to the image
    box_error: str | None  # why there is no box (no boxes, invalid, outside the image)
    crop: Image.Image | None  # turn-2 view: full-resolution crop resized under the budget
    crop_error: str | None


def display_box(row: dict[str, Any], size: Size, stored_size: Size, orientation: int) -> Box:
    """Union of the row's boxes on the displayed image (source rows may still be in the stored frame)."""
    boxes = [Box.from_record(b) for b in row.get("boxes") or []]
    if not boxes:
        raise ValueError("sample has no box")
    if row.get("width") is None and boxes_frame(row) == "stored" and orientation != 1:
        boxes = [rotate_box_with_exif(b, stored_size, orientation) for b in boxes]
    return Box.union(boxes).clamp(size)


def load_views(row: dict[str, Any], max_pixels: int, data: bytes | None = None, with_crop: bool = True) -> Views:
    """Decode the row's image to the coarse view at ``max_pixels`` and crop the box at full resolution
    (``ImageSource.views``: the cheaper of a DCT-scaled view + region-limited crop, or one full decode)."""
    src = ImageSource(load_image_bytes(row) if data is None else data)
    info = src.info
    box = box_error = crop = crop_error = None
    try:
        box = display_box(row, src.size, info.stored_size, info.orientation)
    except ValueError as e:  # BoxError is a ValueError
        box_error = str(e)
    if box is not None and with_crop:
        try:
            crop = Image.fromarray(src.views(max_pixels, box)[1])
        except DecodeError:
            raise
        except ValueError as e:  # crop aspect ratio beyond what the model accepts
            crop_error = str(e)
    return Views(src.size, src.coarse(max_pixels), box, box_error, crop, crop_error or box_error)


def box_on_view(box: Box, size: Size, view_size: Size) -> Box:
    """The box in pixels of a resized view of the image (the model-frame converter)."""
    return Box(*box.to_model(view_size, size))


def with_box(img: Image.Image, box: Box, size: Size, display_height: int) -> Image.Image:
    """A copy of ``img`` (a view of an image of ``size``) with ``box`` drawn, visible at ``display_height``."""
    out = img.copy()
    line = max(2, round(2 * img.height / max(display_height, 1)))
    b = box_on_view(box, size, img.size)
    pad = line  # draw just outside the region so the frame does not hide it
    ImageDraw.Draw(out).rectangle([b.x1 - pad, b.y1 - pad, b.x2 + pad, b.y2 + pad], outline=BOX_COLOUR, width=line)
    return out


def region_of_view(view: Image.Image, box: Box, size: Size) -> Image.Image:
    """The box region cut from a resized view, at that view's resolution."""
    return view.crop(box_on_view(box, size, view.size).integer(view.size))


def fit(img: Image.Image, width: int, height: int, nearest: bool = False) -> Image.Image:
    """Scale ``img`` to fit inside ``width`` x ``height`` keeping its aspect (nearest shows the pixels)."""
    s = min(width / img.width, height / img.height)
    size = (max(1, round(img.width * s)), max(1, round(img.height * s)))
    return img.resize(size, Image.Resampling.NEAREST if nearest else Image.Resampling.LANCZOS)


def panel(img: Image.Image | None, width: int, height: int, label: str, nearest: bool = False,
          missing: str = "") -> Image.Image:
    """A ``width`` x ``height + label`` panel: the image centred, its label above it."""
    out = Image.new("RGB", (width, height + LINE_PX), (245, 245, 245))
    draw = ImageDraw.Draw(out)
    draw.text((2, 1), _clip(label, width, 12), fill=(40, 40, 40), font=font(12))
    if img is None:
        draw.rectangle([0, LINE_PX, width - 1, height + LINE_PX - 1], outline=(180, 180, 180))
        for i, line in enumerate(textwrap.wrap(missing or "not available", max(10, width // 7))[:6]):
            draw.text((6, LINE_PX + 6 + i * LINE_PX), line, fill=(150, 0, 0), font=font(12))
        return out
    im = fit(img, width, height, nearest)
    out.paste(im, ((width - im.width) // 2, LINE_PX + (height - im.height) // 2))
    return out


def _clip(text: str, width_px: int, size: int) -> str:
    f = font(size)
    if f.getlength(text) <= width_px - 4:
        return text
    while text and f.getlength(text + "…") > width_px - 4:
        text = text[:-1]
    return text + "…"


def caption_lines(row: dict[str, Any] | None, sample_id: str, reject: dict[str, Any] | None) -> list[str]:
    """Caption text: id (source, split), question, answer, region size at the budget, or the reject."""
    lines = [sample_id]
    if row is not None:
        meta = ", ".join(str(row[k]) for k in ("source", "split", "category") if row.get(k))
        lines[0] += f"  ({meta})" if meta else ""
        lines.append(f"Q: {row.get('question', '')}")
        letter = f" ({row['answer_letter']})" if row.get("answer_letter") else ""
        lines.append(f"A: {row.get('answer', '')}{letter}")
    if reject is not None:
        lines.append(f"REJECTED by {reject['stage']}: {reject['reason']} - {reject.get('detail') or ''}")
    return lines


def _caption(lines: list[str], width: int) -> Image.Image:
    out = Image.new("RGB", (width, CAPTION_LINES * LINE_PX + PAD), "white")
    draw = ImageDraw.Draw(out)
    wrapped: list[tuple[str, tuple[int, int, int]]] = []
    for text in lines:
        colour = (170, 0, 0) if text.startswith("REJECTED") else (20, 20, 20)
        wrapped += [(w, colour) for w in textwrap.wrap(text, max(20, width // 7))]
    if len(wrapped) > CAPTION_LINES:
        wrapped = wrapped[: CAPTION_LINES - 1] + [(wrapped[CAPTION_LINES - 1][0] + " …", wrapped[CAPTION_LINES - 1][1])]
    for i, (text, colour) in enumerate(wrapped):
        draw.text((PAD, PAD // 2 + i * LINE_PX), _clip(text, width, 13), fill=colour, font=font(13))
    return out


def tile_width(panel_h: int = PANEL) -> int:
    return round(1.5 * panel_h) + 2 * panel_h + 4 * PAD


def render_tile(row: dict[str, Any], max_pixels: int, reject: dict[str, Any] | None = None,
                budget_label: str = "", panel_h: int = PANEL) -> Image.Image:
    """One gallery tile: coarse view with box | box region in the coarse view | full-resolution crop."""
    views = load_views(row, max_pixels)
    coarse_w = round(1.5 * panel_h)
    label = f"coarse {budget_label} {views.coarse.width}x{views.coarse.height}".replace("  ", " ")
    coarse = with_box(views.coarse, views.box, views.size, panel_h) if views.box else views.coarse
    panels = [panel(coarse, coarse_w, panel_h, label)]
    if views.box is not None:
        bw, bh = box_size_at_budget(views.box, views.size, max_pixels)
        panels.append(panel(region_of_view(views.coarse, views.box, views.size), panel_h, panel_h,
                            f"region in coarse: {bw:.0f}x{bh:.0f} px", nearest=True))
        full_w, full_h = views.box.width, views.box.height
        panels.append(panel(views.crop, panel_h, panel_h, f"full-res crop {full_w:.0f}x{full_h:.0f} px",
                            missing=views.crop_error or ""))
    else:
        panels += [panel(None, panel_h, panel_h, "region", missing=views.box_error or "no box")] * 2
    lines = caption_lines(row, row["id"], reject)
    if views.box is not None and reject is None:
        lines.insert(1, _measure_line(views, max_pixels))
    return _assemble(panels, lines, tile_width(panel_h))


def _measure_line(views: Views, max_pixels: int) -> str:
    short = min(box_size_at_budget(views.box, views.size, max_pixels))
    frac = views.box.area / (views.size[0] * views.size[1])
    crop_tokens = vision_tokens(views.crop.size, max_pixels) if views.crop is not None else "?"
    return (f"box short side {short:.1f} px at the budget, {frac:.3%} of the image; tokens: coarse "
            f"{vision_tokens(views.size, max_pixels)} + crop {crop_tokens}")


def _assemble(panels: list[Image.Image], lines: list[str] | None, width: int) -> Image.Image:
    """Panels in a row, then the caption (none when ``lines`` is None)."""
    cap = _caption(lines, width) if lines is not None else Image.new("RGB", (width, 0))
    h = max(p.height for p in panels)
    out = Image.new("RGB", (width, h + cap.height + PAD), "white")
    x = PAD
    for p in panels:
        out.paste(p, (x, PAD))
        x += p.width + PAD
    out.paste(cap, (0, h + PAD))
    return out


def placeholder_tile(sample_id: str, reason: str, why: str, row: dict[str, Any] | None = None,
                     reject: dict[str, Any] | None = None, panel_h: int = PANEL) -> Image.Image:
    """A tile that says why a sample could not be drawn (keeps its place in the sheet)."""
    width = tile_width(panel_h)
    body = panel(None, width - 2 * PAD, panel_h, f"cannot draw: {reason}", missing=why)
    return _assemble([body], caption_lines(row, sample_id, reject), width)


def safe_tile(sample_id: str, row: dict[str, Any] | None, max_pixels: int, reject: dict[str, Any] | None = None,
              budget_label: str = "") -> Image.Image:
    """``render_tile`` that never raises: a broken or missing sample becomes a placeholder tile."""
    if row is None:
        return placeholder_tile(sample_id, "row not available", "the sample's row is not in data/ or "
                                ".work/inputs (rejected by its source, or .work was removed)", None, reject)
    try:
        return render_tile(row, max_pixels, reject, budget_label)
    except FileNotFoundError as e:
        return placeholder_tile(sample_id, "image missing", str(e), row, reject)
    except Exception as e:  # noqa: BLE001 - a broken image must not break the card: the tile says why
        return placeholder_tile(sample_id, getattr(e, "reason", type(e).__name__), str(e), row, reject)


def contact_sheet(tiles: list[Image.Image], title: str, columns: int = 2) -> Image.Image:
    """Tiles on a grid under a title line."""
    columns = max(1, min(columns, len(tiles)))
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    rows = -(-len(tiles) // columns)
    head = 30
    sheet = Image.new("RGB", (columns * tw, head + rows * th), (225, 225, 225))
    ImageDraw.Draw(sheet).text((PAD, 6), _clip(title, columns * tw, 16), fill=(0, 0, 0), font=font(16))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % columns) * tw, head + (i // columns) * th))
    return sheet


# ---- the gallery of a curated set --------------------------------------------------------------------
@dataclass
class GallerySheet:
    title: str
    path: Path
    ids: list[str]
    of_total: int  # how many samples the draw was taken from


def slug(text: str) -> str:
    """File-name-safe form of a stage or reason name.

    >>> slug("source:vstar/region too_small")
    'source-vstar-region-too_small'
    """
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-") or "x"


def draw_ids(ids: Iterable[str], n: int, seed: int) -> list[str]:
    """A seeded random draw of ``n`` ids, independent of the input order, returned sorted.

    >>> draw_ids(["c", "a", "b"], 2, seed=0) == draw_ids(["b", "c", "a"], 2, seed=0)
    True
    """
    pool = sorted(set(ids))
    return sorted(random.Random(seed).sample(pool, min(n, len(pool))))


def rows_by_id(table: pa.Table, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The rows of ``table`` whose id is in ``ids`` (without converting the whole table)."""
    wanted = pa.array(sorted(set(ids)), pa.string())
    return {r["id"]: r for r in table.filter(pc.is_in(table.column("id"), value_set=wanted)).to_pylist()}


def write_gallery(out_dir: Path, folder: Path, kept: pa.Table, rejects: list[dict[str, Any]], seed: int,
                  max_pixels: int, budget_label: str, n_kept: int = 8, n_per_reason: int = 4,
                  progress=None) -> list[GallerySheet]:
    """Contact sheets of a seeded draw of kept samples and of rejects per (stage, reason) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("gallery-*.png"):
        old.unlink()  # sheets of reasons that no longer occur
    kept_ids = kept.column("id").to_pylist() if kept.num_rows else []
    groups: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in rejects:
        groups.setdefault((r["stage"], r["reason"]), {})[r["id"]] = r
    plan = [("kept samples", "gallery-kept.png", draw_ids(kept_ids, n_kept, seed), len(kept_ids), None)]
    for (stage, reason), rs in sorted(groups.items()):
        plan.append((f"rejected by {stage}: {reason}", f"gallery-rejected-{slug(stage)}-{slug(reason)}.png",
                     draw_ids(rs, n_per_reason, seed), len(rs), rs))
    by_id = rows_by_id(kept, plan[0][2]) if kept.num_rows else {}
    sources = input_rows(out_dir, [i for _, _, ids, _, rs in plan if rs is not None for i in ids])
    task = progress.task("gallery", total=sum(len(p[2]) for p in plan)) if progress else None
    sheets = []
    for title, name, ids, total, rejected in plan:
        if not ids:
            continue
        tiles = []
        for i in ids:
            row = by_id.get(i) if rejected is None else sources.get(i)
            tiles.append(safe_tile(i, row, max_pixels, None if rejected is None else rejected[i], budget_label))
            if progress:
                progress.advance(task, 1)
        head = f"{title} - {len(ids)} of {total} (seeded draw, seed {seed})"
        contact_sheet(tiles, head).save(folder / name, optimize=True)
        sheets.append(GallerySheet(title, folder / name, ids, total))
    return sheets


# ---- measuring rejected samples (header only) --------------------------------------------------------
HEADER_BYTES = 1 << 18  # enough for the size and EXIF orientation of JPEG/PNG/WebP
MEASURE_CAP = 2000  # rejected samples measured (image header only) for the plots: a seeded draw beyond this


def measure_row(row: dict[str, Any]) -> dict[str, Any] | None:
    """Derived columns of a source row from its image header only (no pixel decode); None if unusable."""
    img = row.get("image") or {}
    try:
        head = img.get("bytes") or _read_head(Path(img["path"]))
        try:
            info = read_info(head)
        except DecodeError:  # a format whose header is not at the start (some TIFFs): read it all
            info = read_info(img.get("bytes") or Path(img["path"]).read_bytes())
        box = display_box(row, info.size, info.stored_size, info.orientation)
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return {**derived_columns(info.size, [box]), "zoom_gain_1280": zoom_gain(box, info.size, BUDGETS[1280])}


def measure_rejects(out: Path, rejects: list[dict[str, Any]], seed: int, prog=None) -> dict[str, Any]:
    """Derived columns of rejected samples (from ``.work/inputs`` rows and image headers), for the plots.

    Beyond ``MEASURE_CAP`` a seeded draw is measured; the card says how many.
    """
    by_id = {r["id"]: r for r in rejects if not r["stage"].startswith("source:")}
    ids = draw_ids(by_id, MEASURE_CAP, seed)
    rows = input_rows(out, ids)
    task = prog.task("measure rejects", total=len(rows)) if prog else None
    measured = []
    for i, row in rows.items():
        m = measure_row(row)
        if m is not None:
            measured.append({**m, "stage": by_id[i]["stage"], "reason": by_id[i]["reason"]})
        if prog:
            prog.advance(task, 1)
    return {"rows": measured, "of": len(by_id), "drawn": len(ids), "available": len(rows)}


def _read_head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(HEADER_BYTES)


# ---- ergo show ---------------------------------------------------------------------------------------
DISPLAY_PIXELS = 4_000_000  # the full image is shown shrunk to at most this many pixels


def render_sample_views(row: dict[str, Any], budgets: dict[str, int], reject: dict[str, Any] | None = None,
                        panel_h: int = 360) -> Image.Image:
    """Top: full image and the coarse view at each budget (box drawn). Bottom: the full-resolution crop
    (resized under the largest budget, the turn-2 view) and the box region as each coarse view holds it.

    ``budgets`` maps a label (``"640"``) to max_pixels. Raises DecodeError/OSError for unusable images.
    """
    data = load_image_bytes(row)
    crop_pixels = max(budgets.values())
    views = {label: load_views(row, mp, data, with_crop=mp == crop_pixels) for label, mp in budgets.items()}
    base = next(v for label, v in views.items() if budgets[label] == crop_pixels)
    size, box = base.size, base.box
    full = decode_coarse(data, DISPLAY_PIXELS).to_pil()
    w = round(panel_h * 1.5)
    native = derived_columns(size, [])["vision_tokens_full"]
    top = [panel(with_box(full, box, size, panel_h) if box else full, w, panel_h,
                 f"full {size[0]}x{size[1]} ({native} tokens at native resolution)")]
    crop_label = "crop at full resolution" + (
        f", resized to {base.crop.width}x{base.crop.height} ({vision_tokens(base.crop.size, crop_pixels)} tokens)"
        if base.crop is not None else "")
    bottom = [panel(base.crop, w, panel_h, crop_label, missing=base.crop_error or "")]
    for label, v in views.items():
        shown = with_box(v.coarse, box, size, panel_h) if box else v.coarse
        top.append(panel(shown, w, panel_h, f"coarse @{label} tokens: {v.coarse.width}x{v.coarse.height} "
                         f"({vision_tokens(size, budgets[label])} tokens)"))
        if box is None:
            bottom.append(panel(None, w, panel_h, "region", missing=v.box_error or "no box"))
            continue
        bw, bh = box_size_at_budget(box, size, budgets[label])
        bottom.append(panel(region_of_view(v.coarse, box, size), w, panel_h,
                            f"region in coarse @{label}: {bw:.1f}x{bh:.1f} px", nearest=True))
    width = len(top) * (w + PAD) + PAD
    upper = _assemble(top, None, width)
    lower = _assemble(bottom, caption_lines(row, row["id"], reject), width)
    out = Image.new("RGB", (width, upper.height + lower.height), "white")
    out.paste(upper, (0, 0))
    out.paste(lower, (0, upper.height))
    return out
