"""How much detail a zoom adds, against the zoom gain: the figures behind ``visibility.min_zoom_gain``.

For every object of ``tests/data/qa/objects.jsonl`` on the full-resolution V* photos, the photo is
resized to several long sides (the same scene at lower and higher resolutions); at each, the object's
zoom gain at 1280 tokens (``core.vision.zoom_gain``) and the detail the coarse view lacks: the RMS
difference between the zoomed crop and the coarse view's region scaled up to the crop's size, over the
crop's own RMS contrast (0 = the crop shows nothing the coarse view did not). Prints the median per
gain bin. About 30 s on one core.

    python benchmarks/zoom_gain.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ergo_data.core.boxes import Box
from ergo_data.core.vision import BUDGETS, resized_size, zoom_gain

LONG_SIDES = (1000, 1300, 1600, 2000, 2400, 3000, 4240)
BINS = (0.0, 1.1, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 5.0)


def lacking_detail(img: Image.Image, box: Box, max_pixels: int) -> float:
    size = img.size
    rw, rh = resized_size(size, max_pixels)
    coarse = img.resize((rw, rh), Image.BICUBIC)
    x1, y1, x2, y2 = box.integer(size)
    crop = img.crop((x1, y1, x2, y2))
    zw, zh = resized_size(crop.size, max_pixels)
    zoom = crop.resize((min(zw, crop.width), min(zh, crop.height)), Image.BICUBIC)  # never above native pixels
    sx, sy = rw / size[0], rh / size[1]
    back = np.asarray(coarse.resize(zoom.size, Image.BICUBIC, box=(x1 * sx, y1 * sy, x2 * sx, y2 * sy)), dtype=float)
    z = np.asarray(zoom, dtype=float)
    contrast = np.sqrt(((z - z.mean()) ** 2).mean())
    return float(np.sqrt(((z - back) ** 2).mean()) / max(contrast, 1e-6))


def main() -> None:
    by_bin: dict[int, list[float]] = defaultdict(list)
    mp = BUDGETS[1280]
    for line in Path("tests/data/qa/objects.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if "vstar" not in rec["image"]:
            continue
        full = ImageOps.exif_transpose(Image.open(rec["image"])).convert("L")
        for long_side in LONG_SIDES:
            scale = min(long_side / max(full.size), 1.0)
            img = full.resize((round(full.width * scale), round(full.height * scale)), Image.BICUBIC)
            for o in rec["objects"]:
                box = Box(*[v * scale for v in o["box_xyxy"]]).clamp(img.size)
                gain = zoom_gain(box, img.size, mp)
                if gain is None:
                    continue
                b = max(i for i, lo in enumerate(BINS) if gain >= lo)
                by_bin[b].append(lacking_detail(img, box, mp))
    print("| zoom gain | items | detail the coarse view lacks: median (p25 .. p75) |")
    print("|---|---|---|")
    for b in sorted(by_bin):
        v = np.array(by_bin[b])
        hi = BINS[b + 1] if b + 1 < len(BINS) else "inf"
        print(f"| [{BINS[b]:g}, {hi}) | {len(v)} | {np.median(v):.3f} ({np.percentile(v, 25):.3f} .. "
              f"{np.percentile(v, 75):.3f}) |")


if __name__ == "__main__":
    main()
