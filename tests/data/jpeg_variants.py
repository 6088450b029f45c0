"""JPEG variants that viewers open: encoder options (Pillow, simplejpeg) and byte surgery on real streams.

Each builder takes an RGB array and returns ``(file bytes, clean bytes)``: ``clean`` is the same image
without the surgery (what Pillow shows for both), for the variants whose surgery Pillow's own header
parser may refuse. ``VARIANTS`` names each one with the decoder path it must take (``fast``: simplejpeg /
libvips; ``fallback``: Pillow) and the libjpeg warning it must report (``None``: none).

>>> data, clean = VARIANTS["junk_before_eoi"].build(np.zeros((16, 24, 3), np.uint8))
>>> len(data) - len(clean), data.endswith(b"\\xff\\xd9")
(33, True)
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image

EOI, SOS, DQT = b"\xff\xd9", b"\xff\xda", b"\xff\xdb"


def pillow_jpeg(arr: np.ndarray, mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def insert_before(data: bytes, marker: bytes, junk: bytes, last: bool = False) -> bytes:
    """``junk`` inserted right before the first (or ``last``) occurrence of ``marker``."""
    at = data.rindex(marker) if last else data.index(marker)
    return data[:at] + junk + data[at:]


def extraneous_before_eoi(jpeg: bytes, n: int = 33) -> bytes:
    """The issue's receipt scans: ``n`` stray bytes between the last entropy-coded byte and EOI."""
    return insert_before(jpeg, EOI, bytes(range(1, n + 1)), last=True)


def exif_with_thumbnail(thumbnail: bytes, orientation: int = 1) -> bytes:
    """An APP1 Exif payload: IFD0 (orientation) and IFD1 holding a JPEG thumbnail (written by hand:
    Pillow cannot write IFD1)."""
    entry = struct.Struct("<HHII")  # tag, type, count, value/offset (little-endian TIFF)
    ifd0_at = 8
    ifd1_at = ifd0_at + 2 + entry.size + 4
    thumb_at = ifd1_at + 2 + 3 * entry.size + 4
    tiff = b"II*\x00" + struct.pack("<I", ifd0_at)
    tiff += struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", ifd1_at)
    tiff += struct.pack("<H", 3) + struct.pack("<HHIHH", 0x0103, 3, 1, 6, 0)  # compression: JPEG
    tiff += entry.pack(0x0201, 4, 1, thumb_at) + entry.pack(0x0202, 4, 1, len(thumbnail)) + struct.pack("<I", 0)
    return b"Exif\x00\x00" + tiff + thumbnail


def _large_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010E] = "receipt " * 7000  # ImageDescription: a ~56 KB APP1 segment
    exif[0x0112] = 1
    return exif.tobytes()


@dataclass(frozen=True)
class Variant:
    make: Callable[[np.ndarray], tuple[bytes, bytes]]
    path: str  # "fast" or "fallback"
    warning: str | None = None  # a substring of the libjpeg warning the decode must report

    def build(self, arr: np.ndarray) -> tuple[bytes, bytes]:
        return self.make(arr)


def _same(make: Callable[[np.ndarray], bytes]) -> Callable[[np.ndarray], tuple[bytes, bytes]]:
    def build(arr: np.ndarray) -> tuple[bytes, bytes]:
        data = make(arr)
        return data, data
    return build


def _surgery(edit: Callable[[bytes], bytes]) -> Callable[[np.ndarray], tuple[bytes, bytes]]:
    def build(arr: np.ndarray) -> tuple[bytes, bytes]:
        clean = pillow_jpeg(arr)
        return edit(clean), clean
    return build


VARIANTS: dict[str, Variant] = {
    "baseline_420": Variant(_same(lambda a: pillow_jpeg(a, subsampling=2)), "fast"),
    "baseline_422": Variant(_same(lambda a: pillow_jpeg(a, subsampling=1)), "fast"),
    "baseline_444": Variant(_same(lambda a: pillow_jpeg(a, subsampling=0)), "fast"),
    "baseline_440": Variant(_same(lambda a: simplejpeg.encode_jpeg(a, 90, colorsubsampling="440")), "fast"),
    "progressive": Variant(_same(lambda a: pillow_jpeg(a, progressive=True)), "fast"),
    "progressive_444": Variant(_same(lambda a: pillow_jpeg(a, progressive=True, subsampling=0)), "fast"),
    "restart_every_row": Variant(_same(lambda a: pillow_jpeg(a, restart_marker_rows=1)), "fast"),
    "restart_every_5_blocks": Variant(_same(lambda a: pillow_jpeg(a, restart_marker_blocks=5)), "fast"),
    "grayscale": Variant(_same(lambda a: pillow_jpeg(a, mode="L")), "fast"),
    "adobe_cmyk": Variant(_same(lambda a: pillow_jpeg(a, mode="CMYK")), "fallback"),
    # TurboJPEG compresses CMYK pixels as YCCK (Adobe transform 2)
    "adobe_ycck": Variant(_same(lambda a: simplejpeg.encode_jpeg(
        np.asarray(Image.fromarray(a).convert("CMYK")), 90, colorspace="CMYK", colorsubsampling="444")), "fallback"),
    "large_icc": Variant(_same(lambda a: pillow_jpeg(a, icc_profile=bytes(range(256)) * 800)), "fast"),  # 4 APP2
    "large_exif": Variant(_same(lambda a: pillow_jpeg(a, exif=_large_exif())), "fast"),
    "large_xmp": Variant(_same(lambda a: pillow_jpeg(a, xmp=b"<x:xmpmeta>" + b" " * 60000 + b"</x:xmpmeta>")), "fast"),
    "exif_thumbnail": Variant(_same(lambda a: pillow_jpeg(
        a, exif=exif_with_thumbnail(pillow_jpeg(a[::8, ::8].copy(), quality=70)))), "fast"),
    "junk_after_eoi": Variant(_surgery(lambda d: d + b"\x00\x01junk after the image" * 50), "fast"),
    "junk_before_eoi": Variant(_surgery(extraneous_before_eoi), "fast", "extraneous bytes before marker 0xd9"),
    "junk_before_sos": Variant(_surgery(lambda d: insert_before(d, SOS, b"\x00junk!")), "fast",
                               "extraneous bytes before marker 0xda"),
    "junk_before_dqt": Variant(_surgery(lambda d: insert_before(d, DQT, b"\x00junk!")), "fast",
                               "extraneous bytes before marker 0xdb"),
}
