"""The bad-input corpus of the detection formats: a YOLO, a Pascal VOC and a LabelMe set with the faults
real sets have, each with the reject it must give (id, reason, and a piece of the detail naming the file
and line). Tests build it into a temporary folder (``build(tmp_path)``); run this file to look at it:

    python tests/data/make_bad_detection.py /tmp/bad_detection
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.data.make_bad_inputs import encode, photo

W, H = 640, 480


@dataclass(frozen=True)
class Expect:
    id: str  # the reject's id (source name / key)
    reason: str
    detail: str  # a piece of the detail: the file and line or object


def _jpeg() -> bytes:
    return encode(photo(W, H), "JPEG", quality=85)


def build_yolo(root: Path) -> list[Expect]:
    """``yolo/``: data.yaml (car, person), images/ + labels/."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("nc: 2\nnames: [car, person]\n")
    jpeg = _jpeg()
    files = {
        "good": "0 0.5 0.5 0.1 0.1\n1 0.2 0.2 0.05 0.1\n",
        "lines": ("0 0.5 0.5 0.2 0.2\n"      # 1 good
                  "0 0.5 0.5\n"               # 2 malformed
                  "7 0.5 0.5 0.1 0.1\n"       # 3 class id outside the names
                  "0 320 240 50 40\n"         # 4 pixels given as normalised
                  "1 0.5 0.5 0 0.1\n"         # 5 degenerate
                  "1 0.95 0.5 0.3 0.1\n"),    # 6 runs 64 px past the right edge
        "empty": "",
        "zero": "0 0.5 0.5 0.1 0.1\n",
        "garbage": "0 0.5 0.5 0.1 0.1\n",
        "orphan": "0 0.5 0.5 0.1 0.1\n",
    }
    images = {"good": jpeg, "lines": jpeg, "empty": jpeg, "zero": b"", "garbage": b"this is not an image at all",
              "nolabel": jpeg}
    for stem, text in files.items():
        (root / "labels" / f"{stem}.txt").write_text(text)
    for stem, data in images.items():
        (root / "images" / f"{stem}.jpg").write_bytes(data)
    return [
        Expect("yolo/images/lines/object1", "malformed_line", "labels/lines.txt:2"),
        Expect("yolo/images/lines/object2", "unknown_class", "labels/lines.txt:3: class id 7 is outside the names"),
        Expect("yolo/images/lines/object3", "box_not_normalised", "labels/lines.txt:4"),
        Expect("yolo/images/lines/object4", "box_degenerate", "labels/lines.txt:5"),
        Expect("yolo/images/lines/object5", "box_outside_image", "labels/lines.txt:6"),
        Expect("yolo/images/empty", "no_objects", "labels/empty.txt"),
        Expect("yolo/images/zero", "empty_file", "images/zero.jpg"),
        Expect("yolo/images/garbage", "unreadable_image", "images/garbage.jpg"),
        Expect("yolo/images/nolabel", "no_label_file", "labels/nolabel.txt not found"),
        Expect("yolo/labels/orphan", "image_missing", "labels/orphan.txt: label file without its image"),
    ]


def _voc(filename: str, objects: list[tuple[str, tuple]], size: tuple[int, int] = (W, H)) -> str:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
            f"</size>{objs}</annotation>")


def build_voc(root: Path) -> list[Expect]:
    """``voc/``: Annotations/ + JPEGImages/; the source is given ``classes: [car, person]``."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    jpeg = _jpeg()
    docs = {
        "good": _voc("good.jpg", [("car", (10, 10, 60, 50)), ("person", (300, 100, 340, 200))]),
        "normalised": _voc("normalised.jpg", [("car", (0.1, 0.1, 0.3, 0.3)), ("person", (300, 100, 340, 200))]),
        "outside": _voc("outside.jpg", [("car", (500, 10, 900, 50)), ("person", (300, 100, 340, 200))]),
        "truck": _voc("truck.jpg", [("truck", (10, 10, 60, 50)), ("car", (300, 100, 340, 200))]),
        "resized": _voc("resized.jpg", [("car", (10, 10, 60, 50))], size=(1280, 960)),
        "gone": _voc("gone.jpg", [("car", (10, 10, 60, 50))]),
    }
    for stem, text in docs.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        if stem != "gone":
            (root / "JPEGImages" / f"{stem}.jpg").write_bytes(jpeg)
    (root / "Annotations" / "broken.xml").write_text("<annotation>\n<filename>good.jpg</filename>\n<object>\n")
    return [
        Expect("voc/JPEGImages/normalised/object0", "box_looks_normalised", "Annotations/normalised.xml object 1"),
        Expect("voc/JPEGImages/outside/object0", "box_outside_image", "Annotations/outside.xml object 1"),
        Expect("voc/JPEGImages/truck/object0", "unknown_class", "label 'truck' is not one of the source's classes"),
        Expect("voc/JPEGImages/resized", "size_mismatch", "declares a 1280x960 image"),
        Expect("voc/JPEGImages/gone", "image_missing", "Annotations/gone.xml"),
        Expect("voc/Annotations/broken", "malformed_xml", "Annotations/broken.xml:4"),
    ]


def build_labelme(root: Path) -> list[Expect]:
    """``labelme/``: one JSON beside each image."""
    root.mkdir(parents=True)
    jpeg = _jpeg()

    def doc(stem: str, shapes: list[dict], image: str | None = None) -> None:
        (root / f"{stem}.json").write_text(json.dumps({
            "version": "5.5.0", "shapes": shapes, "imagePath": image or f"{stem}.jpg", "imageData": None,
            "imageWidth": W, "imageHeight": H}))

    rect = {"label": "car", "points": [[60, 50], [10, 10]], "shape_type": "rectangle"}
    poly = {"label": "person", "points": [[1, 1], [30, 2], [20, 40]], "shape_type": "polygon"}
    doc("good", [rect, dict(rect, label="person", points=[[300, 100], [340, 200]])])
    doc("poly", [rect, poly])
    doc("escape", [rect], image="../../outside.jpg")
    for stem in ("good", "poly"):
        (root / f"{stem}.jpg").write_bytes(jpeg)
    (root / "broken.json").write_text('{"shapes": [')
    return [
        Expect("labelme/poly/object1", "unsupported_shape", "poly.json shapes[1] (person): shape_type 'polygon'"),
        Expect("labelme/escape/outside", "path_escapes_root", "escape.json"),
        Expect("labelme/broken", "malformed_json", "broken.json"),
    ]


def build(root: Path) -> tuple[list[dict], list[Expect]]:
    """Write the three sets under ``root``; return the ``questions`` source specs and the expected rejects."""
    expects = build_yolo(root / "yolo") + build_voc(root / "voc") + build_labelme(root / "labelme")
    sources = [
        {"type": "questions", "name": "yolo", "path": str(root / "yolo"), "format": "yolo", "exhaustive": True},
        {"type": "questions", "name": "voc", "path": str(root / "voc"), "format": "voc", "exhaustive": True,
         "classes": ["car", "person"]},
        {"type": "questions", "name": "labelme", "path": str(root / "labelme"), "format": "labelme",
         "exhaustive": True},
    ]
    return sources, expects


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/bad_detection")
    specs, cases = build(out)
    print(json.dumps(specs, indent=2))
    for c in cases:
        print(c)
