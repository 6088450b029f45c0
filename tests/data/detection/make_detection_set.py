"""Write the small real detection set of ``tests/data/detection/`` in five layouts from one source of truth.

Images: three V* photos (MIT, penghao-wu/vstar) downscaled to 2400 px on the long side (JPEG q80) and the
obss/sahi aerial ``terrain2`` (MIT) at its own 1024x682; objects: their boxes in ``tests/data/qa/objects.jsonl``
(hand-drawn on full-resolution crops or checked by eye; see LICENSES.md), scaled with the image. The same
objects are written as YOLO (``images/`` + ``labels/`` + ``data.yaml``), Pascal VOC (``Annotations/``),
LabelMe (``labelme/``), CVAT for images (``cvat.xml``) and Open Images CSV (``openimages/``), so the
readers can be checked against each other. Run from the repository root:

    python tests/data/detection/make_detection_set.py
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PIL import Image, ImageOps

from ergo_data.core.boxes import Box

HERE = Path(__file__).parent
PICKS = {"examples/vstar/doll.JPG": 2400, "examples/vstar/queue_time.jpg": 2400,
         "examples/vstar/vending_machine.jpg": 2400, "examples/coco/terrain2.png": None}


def main() -> None:
    items = []
    for line in Path("tests/data/qa/objects.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if rec["image"] not in PICKS:
            continue
        im = ImageOps.exif_transpose(Image.open(rec["image"])).convert("RGB")
        long_side = PICKS[rec["image"]] or max(im.size)
        scale = long_side / max(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        stem = Path(rec["image"]).stem
        (HERE / "images").mkdir(exist_ok=True)
        im.save(HERE / "images" / f"{stem}.jpg", quality=80, optimize=True)
        objects = [(o["label"], Box(*[v * min(scale, 1) for v in o["box_xyxy"]]).clamp(im.size))
                   for o in rec["objects"]]
        items.append((stem, im.size, objects))
    names = sorted({label for _, _, objs in items for label, _ in objs})
    (HERE / "data.yaml").write_text("# class names of the YOLO layout (labels/*.txt: class cx cy w h, normalised)\n"
                                    f"path: .\ntrain: images\nnc: {len(names)}\nnames:\n"
                                    + "".join(f"  - {n}\n" for n in names))
    for sub in ("labels", "Annotations", "labelme", "openimages"):
        (HERE / sub).mkdir(exist_ok=True)
    cvat = ['<?xml version="1.0" encoding="utf-8"?>', "<annotations>", "  <version>1.1</version>",
            "  <meta><task><labels>"] + [f"    <label><name>{n}</name></label>" for n in names] + \
           ["  </labels></task></meta>"]
    oi_rows = []
    for i, (stem, (w, h), objects) in enumerate(items):
        (HERE / "labels" / f"{stem}.txt").write_text("".join(
            f"{names.index(label)} " + " ".join(f"{v:.6f}" for v in box.to_yolo((w, h))) + "\n"
            for label, box in objects))
        xml_objects = "".join(
            f"  <object><name>{label}</name><difficult>0</difficult><bndbox>"
            + "".join(f"<{t}>{v:.1f}</{t}>" for t, v in zip(("xmin", "ymin", "xmax", "ymax"), box.to_voc()))
            + "</bndbox></object>\n" for label, box in objects)
        (HERE / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation>\n  <folder>images</folder>\n  <filename>{stem}.jpg</filename>\n"
            f"  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>\n{xml_objects}</annotation>\n")
        shapes = [{"label": label, "points": box.to_corners(), "group_id": None, "shape_type": "rectangle",
                   "flags": {}} for label, box in objects]
        (HERE / "labelme" / f"{stem}.json").write_text(json.dumps(
            {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"../images/{stem}.jpg",
             "imageData": None, "imageHeight": h, "imageWidth": w}, indent=1) + "\n")
        cvat.append(f'  <image id="{i}" name="{stem}.jpg" width="{w}" height="{h}">')
        cvat += [f'    <box label="{label}" occluded="0" source="manual" xtl="{box.x1:.2f}" ytl="{box.y1:.2f}" '
                 f'xbr="{box.x2:.2f}" ybr="{box.y2:.2f}" z_order="0"></box>' for label, box in objects]
        cvat.append("  </image>")
        oi_rows += [[stem, "xclick", f"/m/ergo{names.index(label)}", "1",
                     *[f"{v:.6f}" for v in box.to_openimages((w, h))], "0", "0", "0", "0", "0"]
                    for label, box in objects]
    (HERE / "cvat.xml").write_text("\n".join([*cvat, "</annotations>"]) + "\n")
    with open(HERE / "openimages" / "boxes.csv", "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
                      "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"])
        out.writerows(oi_rows)
    with open(HERE / "openimages" / "class-descriptions-boxable.csv", "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([[f"/m/ergo{i}", n] for i, n in enumerate(names)])
    write_hf_parquet(items, names)


def write_hf_parquet(items: list, names: list[str]) -> None:
    """``hf/train.parquet`` as ``datasets`` writes an object-detection set: Image (here a path relative to the
    set's root, no bytes), ``objects.bbox`` COCO xywh, ``objects.category`` a ClassLabel (names in the metadata)."""
    import os

    import datasets

    features = datasets.Features({
        "image_id": datasets.Value("string"), "image": datasets.Image(decode=False),
        "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=names)})})
    rows = {"image_id": [stem for stem, _, _ in items],
            "image": [{"path": f"images/{stem}.jpg", "bytes": None} for stem, _, _ in items],
            "width": [size[0] for _, size, _ in items], "height": [size[1] for _, size, _ in items],
            "objects": [{"bbox": [box.to_coco() for _, box in objs], "category": [names.index(lab) for lab, _ in objs]}
                        for _, _, objs in items]}
    (HERE / "hf").mkdir(exist_ok=True)
    cwd = os.getcwd()
    os.chdir(HERE)  # `datasets` keeps a relative image path as it is when run from the set's root
    try:
        datasets.Dataset.from_dict(rows, features=features).to_parquet("hf/train.parquet")
    finally:
        os.chdir(cwd)


if __name__ == "__main__":
    main()
