"""The bad-input corpus: small crafted files in three sources, each with the outcome it must have.

Tests build it into a temporary folder (``build_corpus(tmp_path)``); run this file to write it somewhere
to look at it (``python tests/data/make_bad_inputs.py /tmp/bad_inputs`` prints the recipe and cases).

Layout: ``vstar/`` (V* layout, boxes on the displayed image), ``stored/`` (V* layout, boxes on the
stored pixels: ``boxes_frame: stored``), ``jsonl/manifest.jsonl`` (+ ``jsonl/img/``), ``coco/`` (+ json).
Every case ends either kept (and correct: ``width``/``height``/``box`` checked) or rejected with the
named ``reason`` by the named ``stage`` and a ``detail`` that names the item.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 160, 0), (0, 0, 255)


# ---- image bytes -----------------------------------------------------------------------------------
def pattern(width: int, height: int, marker: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Asymmetric test card: red / green / blue / grey quadrants (a wrong rotation or flip shows), plus
    an optional white ``marker`` rectangle ``(x1, y1, x2, y2)``."""
    a = np.full((height, width, 3), 128, np.uint8)
    a[: height // 2, : width // 2] = RED
    a[: height // 2, width // 2:] = GREEN
    a[height // 2:, : width // 2] = BLUE
    if marker:
        x1, y1, x2, y2 = marker
        a[y1:y2, x1:x2] = 255
    return a


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour plus grain: photo-like content for resize comparisons and distinct pHashes."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    px = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    return np.clip(px + rng.integers(-6, 7, (height, width, 3)), 0, 255).astype(np.uint8)


def encode(img: Image.Image | np.ndarray, fmt: str, orientation: int | None = None, **kw) -> bytes:
    """Encode with Pillow; ``orientation`` adds an EXIF orientation tag."""
    im = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose header declares ``width`` x ``height`` (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8)) + chunk(b"IEND", b"")


def jpeg_header_claiming(width: int, height: int) -> bytes:
    """A tiny real JPEG whose SOF marker is patched to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), RED), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def rgb16_png(arr8: np.ndarray) -> bytes:
    """48-bit RGB PNG (Pillow cannot write one; libvips can)."""
    import pyvips

    a16 = np.ascontiguousarray(arr8.astype(np.uint16) * 257)
    h, w, _ = a16.shape
    return pyvips.Image.new_from_memory(a16.data, w, h, 3, "ushort").copy(interpretation="rgb16").write_to_buffer(".png")


def grey16_png(arr8: np.ndarray) -> bytes:
    return encode(Image.fromarray(arr8[..., 0].astype(np.uint16) * 257), "PNG")  # mode I;16


def palette_alpha_png(arr8: np.ndarray) -> bytes:
    """Palette PNG whose index 0 (the grey quadrant's colour) is fully transparent."""
    p = Image.fromarray(arr8).quantize(colors=8)
    grey_index = p.getpixel((arr8.shape[1] - 1, arr8.shape[0] - 1))
    return encode(p, "PNG", transparency=grey_index)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def corrupt_scan(jpeg: bytes) -> bytes:
    """Zero the middle third of the entropy-coded data: same length, still ends with its EOI marker."""
    sos = jpeg.index(b"\xff\xda") + 20
    a, b = sos + (len(jpeg) - sos) // 3, sos + 2 * (len(jpeg) - sos) // 3
    return jpeg[:a] + b"\0" * (b - a) + jpeg[b:]


# ---- the corpus --------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str  # sample id the pipeline gives the item
    outcome: str  # "kept" or the reject reason
    stage: str = ""  # stage that rejects (e.g. "decode", "source:vstar")
    detail_has: str = ""  # a substring of the reject detail that names the item
    size: tuple[int, int] | None = None  # expected (width, height) when kept
    box: tuple[float, float, float, float] | None = None  # expected first box when kept


W, H = 168, 112  # multiples of 28: the decoder keeps native size at a large budget
VSTAR_BOX = [20, 10, 30, 20]  # [x, y, w, h] inside every W x H image


def _vstar_item(folder: Path, stem: str, image: bytes | None, ext: str = "jpg", bbox=None, **meta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"question": "What colour is the marked object?", "options": ["red", "blue", "green", "grey"],
           "bbox": [VSTAR_BOX] if bbox is None else bbox, "target_object": ["object"]}
    doc.update(meta)
    (folder / f"{stem}.json").write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    if image is not None:
        (folder / f"{stem}.{ext}").write_bytes(image)


def build_corpus(root: Path) -> tuple[dict, list[Case]]:
    """Write every case under ``root``; return ``(recipe dict, expected cases)``."""
    root = Path(root)
    card = pattern(W, H)
    jpeg = encode(card, "JPEG", quality=92)
    cases: list[Case] = []
    vs, st = root / "vstar", root / "stored"

    def vstar(stem, image, outcome, stage="", detail="", ext="jpg", size=(W, H), box=None, **kw):
        _vstar_item(vs, stem, image, ext, **kw)
        cases.append(Case(f"bad/{stem}", outcome, stage, detail or stem,
                          size if outcome == "kept" else None, box))

    # image files: decoded, converted, or rejected by `decode`
    vstar("truncated_jpeg", truncated(jpeg), "truncated_image", "decode")
    vstar("zero_byte", b"", "empty_file", "decode")
    vstar("not_an_image", b"just some text, not pixels\n" * 4, "unreadable_image", "decode")
    vstar("corrupt_jpeg", corrupt_scan(jpeg), "corrupt_image", "decode")
    vstar("truncated_png", truncated(encode(card, "PNG")), "truncated_image", "decode", ext="png")
    vstar("truncated_header", jpeg[:60], "truncated_image", "decode")
    vstar("bomb_png_header", png_header_only(20_000, 10_000), "decompression_bomb", "decode", ext="png")
    vstar("bomb_jpeg_header", jpeg_header_claiming(20_000, 10_000), "decompression_bomb", "decode")
    vstar("extreme_aspect", encode(np.zeros((4, 1000, 3), np.uint8), "PNG"), "extreme_aspect_ratio", "decode",
          ext="png", bbox=[[1, 1, 2, 2]])
    vstar("png_named_jpg", encode(card, "PNG"), "kept")  # wrong extension: the content decides
    vstar("jpeg_named_png", jpeg, "kept", ext="png")
    # libjpeg warns "Corrupt JPEG data: N extraneous bytes before marker 0xd9"; the pixels are intact
    vstar("extraneous_bytes_before_eoi", jpeg[:-2] + bytes(range(1, 34)) + jpeg[-2:], "kept")
    vstar("cmyk_jpeg", encode(Image.fromarray(card).convert("CMYK"), "JPEG", quality=95), "kept")
    vstar("grey16_png", grey16_png(card), "kept", ext="png")
    vstar("rgb16_png", rgb16_png(card), "kept", ext="png")
    vstar("palette_alpha_png", palette_alpha_png(card), "kept", ext="png")
    vstar("mpo_two_frames", encode(Image.fromarray(card), "MPO", save_all=True,
                                   append_images=[Image.new("RGB", (W, H), BLUE)]), "kept", ext="mpo")
    vstar("tiff_two_pages", encode(Image.fromarray(card), "TIFF", save_all=True,
                                   append_images=[Image.new("RGB", (60, 40), BLUE)]), "kept", ext="tif")
    # EXIF orientation 6 (90 degrees clockwise): displayed size is H x W; the box is already displayed
    vstar("exif_rotated", encode(card, "JPEG", orientation=6, quality=92), "kept", size=(H, W),
          box=(20.0, 10.0, 50.0, 30.0))
    # boxes: checked by the source (finite, positive size) or by `box_check` (inside the image)
    vstar("box_outside", jpeg, "box_outside_image", "box_check", "boxes[0]", bbox=[[150, 100, 60, 60]])
    vstar("box_negative", jpeg, "box_outside_image", "box_check", "boxes[0]", bbox=[[-40, -30, 60, 50]])
    vstar("box_tiny", jpeg, "box_too_small", "box_check", "boxes[0]", bbox=[[10, 10, 0.25, 0.25]])
    vstar("box_nan", jpeg, "bad_box", "source:vstar", bbox=[[float("nan"), 10, 30, 20]])
    vstar("box_degenerate", jpeg, "bad_box", "source:vstar", bbox=[[10, 10, 0, 20]])
    vstar("box_not_numbers", jpeg, "bad_box", "source:vstar", bbox=[["a", "b", "c", "d"]])
    vstar("missing_bbox", jpeg, "missing_box", "source:vstar", bbox=[])
    # the annotation json
    vstar("empty_question", jpeg, "missing_question", "source:vstar", question="   ")
    vstar("duplicate_options", jpeg, "bad_options", "source:vstar", options=["red", "blue", "red"])
    vstar("options_not_list", jpeg, "bad_options", "source:vstar", options="red")
    vstar("missing_image", None, "image_missing", "source:vstar")
    (vs / "malformed_json.jpg").write_bytes(jpeg)
    (vs / "malformed_json.json").write_text('{"question": "What?", "options": ["a", "b"], "bbox": [[1, 2, 3')
    cases.append(Case("bad/malformed_json", "malformed_json", "source:vstar", "malformed_json.json"))
    (vs / "not_utf8.jpg").write_bytes(jpeg)
    (vs / "not_utf8.json").write_bytes(json.dumps({"question": "Qu\u00e9?", "options": ["a"], "bbox": [VSTAR_BOX]},
                                                  ensure_ascii=False).encode("latin-1"))
    cases.append(Case("bad/not_utf8", "bad_encoding", "source:vstar", "not UTF-8"))
    (vs / "top_level_list.jpg").write_bytes(jpeg)
    (vs / "top_level_list.json").write_text("[1, 2, 3]")
    cases.append(Case("bad/top_level_list", "malformed_json", "source:vstar", "top_level_list.json"))

    # boxes on the STORED pixels of an EXIF-rotated image: `decode` rotates them with the image
    marker = (100, 20, 140, 50)  # stored frame, x1 y1 x2 y2
    _vstar_item(st, "exif_stored_box", encode(pattern(W, H, marker), "PNG", orientation=6), "png",
                bbox=[[marker[0], marker[1], marker[2] - marker[0], marker[3] - marker[1]]])
    cases.append(Case("stored/exif_stored_box", "kept", size=(H, W),
                      box=(H - marker[3], marker[0], H - marker[1], marker[2])))

    cases += _jsonl_cases(root, jpeg)
    cases += _coco_cases(root, jpeg)
    recipe = {
        "name": "bad-inputs",
        "sources": [
            {"type": "vstar", "name": "bad", "path": str(vs)},
            {"type": "vstar", "name": "stored", "path": str(st), "boxes_frame": "stored"},
            {"type": "jsonl", "name": "manifest", "path": str(root / "jsonl" / "manifest.jsonl")},
            {"type": "coco", "name": "coco", "path": str(root / "coco"), "annotations": "ann.json"},
        ],
        "stages": [{"type": "decode", "max_pixels": 4 * W * H}, {"type": "box_check"}],
        "output": {"chunk_rows": 8, "shard_rows": 50, "plots": False},
    }
    return recipe, cases


def _jsonl_cases(root: Path, jpeg: bytes) -> list[Case]:
    folder = root / "jsonl"
    (folder / "img").mkdir(parents=True, exist_ok=True)
    (folder / "img" / "good.jpg").write_bytes(jpeg)
    (root / "outside.jpg").write_bytes(jpeg)  # exists, but outside the manifest's folder
    (folder / "img" / "link.jpg").symlink_to(root / "outside.jpg")
    box = {"x1": 20.0, "y1": 10.0, "x2": 50.0, "y2": 30.0, "label": "obj", "source": "annotation"}

    def rec(key, **kw):
        base = {"key": key, "image": "img/good.jpg", "question": "What is it?", "answer": "cat", "boxes": [box]}
        return json.dumps({**base, **kw}).encode()

    lines = [
        (rec("good"), Case("manifest/good", "kept", size=(W, H), box=(20.0, 10.0, 50.0, 30.0))),
        (rec("escape", image="../../x.jpg"), Case("manifest/escape", "path_escapes_root", "source:jsonl", ":2")),
        (rec("absolute", image="/etc/hostname"), Case("manifest/absolute", "path_escapes_root", "source:jsonl", ":3")),
        (rec("symlink_out", image="img/link.jpg"),
         Case("manifest/symlink_out", "path_escapes_root", "source:jsonl", ":4")),
        (b'{"key": "broken", "image": ', Case("manifest/line5", "malformed_json", "source:jsonl", "manifest.jsonl:5")),
        (rec("latin1").replace(b"What", "Qu\u00e9".encode("latin-1")),
         Case("manifest/line6", "bad_encoding", "source:jsonl", "manifest.jsonl:6")),
        (rec("no_image", image=None), Case("manifest/no_image", "image_missing", "source:jsonl", ":7")),
        (rec("gone", image="img/gone.jpg"), Case("manifest/gone", "image_missing", "decode", "gone.jpg")),
        (rec("empty_q", question=""), Case("manifest/empty_q", "bad_record", "source:jsonl", "question")),
        (rec("nan_box", boxes=[{**box, "x1": float("nan")}]),
         Case("manifest/nan_box", "bad_record", "source:jsonl", "non-finite")),
        (rec("box_no_label", boxes=[{"x1": 1, "y1": 1, "x2": 5, "y2": 5}]),
         Case("manifest/box_no_label", "bad_record", "source:jsonl", "boxes[0]")),
        (rec("wrong_letter", options=["dog", "cat"], answer_letter="A"),
         Case("manifest/wrong_letter", "bad_record", "source:jsonl", "answer")),
        (rec("no_box", boxes=[]), Case("manifest/no_box", "no_box", "box_check", "no box")),
        (rec("good"), Case("manifest/good", "duplicate_id", "source:jsonl", "already emitted")),
    ]
    (folder / "manifest.jsonl").write_bytes(b"\n".join(line for line, _ in lines) + b"\n")
    return [c for _, c in lines]


def _coco_cases(root: Path, jpeg: bytes) -> list[Case]:
    folder = root / "coco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.jpg").write_bytes(jpeg)
    ann = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": W, "height": H},
                   {"id": 2, "file_name": "../outside.jpg", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 10, 30, 20]},
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [20, 10, 30, 20]},
            {"id": 12, "image_id": 99, "category_id": 1, "bbox": [20, 10, 30, 20]},
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [20, 10, -5, 20]},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [20, 10, 30, 20], "iscrowd": 1},
            {"id": 15, "image_id": 1, "category_id": 1},
        ],
    }
    (folder / "ann.json").write_text(json.dumps(ann))
    return [
        Case("coco/1/10", "kept", size=(W, H), box=(20.0, 10.0, 50.0, 30.0)),
        Case("coco/2/11", "path_escapes_root", "source:coco", "../outside.jpg"),
        Case("coco/99/12", "image_missing", "source:coco", "annotation 12"),
        Case("coco/1/13", "bad_box", "source:coco", "annotation 13"),
        Case("coco/1/14", "crowd_annotation", "source:coco", "iscrowd"),
        Case("coco/1/15", "bad_box", "source:coco", "annotation 15"),
    ]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs")
    recipe, cases = build_corpus(out)
    print(json.dumps(recipe, indent=2))
    for c in cases:
        print(f"{c.id:<32} {c.outcome:<22} {c.stage}")
