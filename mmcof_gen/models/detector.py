"""Open-vocabulary detectors (the locator role) behind one batch interface.

Many agents ask for phrases in their frames at once; a detector answers a whole batch with one forward
pass per `batch_size` frames (a Ray detector actor feeds it requests from many agents). Boxes come back
in each frame's integer pixels, clipped and valid, best score first:

    owl = detector(DetectorConfig(backend="owlv2", model="google/owlv2-base-patch16-ensemble"))
    [[det, ...], [...]] = owl.detect([(frame_a, ["red car"]), (frame_b, ["sign", "clock"])])

Backends: GroundingDINO and OWLv2 via transformers (hub ids or local folders, the same
`from_pretrained` code), YOLO-World and YOLOE via ultralytics (the optional `[yolo]` extra, AGPL-3.0),
and RapidOCR (text lines a phrase names; a core dependency, `models/ocr.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from mmcof_gen.imaging import InvalidBox, clip_box
from mmcof_gen.models.ocr_config import ENGINE_NAME
from mmcof_gen.schema import Detection, one_of


@dataclass(frozen=True)
class DetectorBackend:
    """One detector backend: the class built from a `DetectorConfig` ("module:Class", imported only as one is
    built), the optional extra it needs and the modules of it `detector()` checks (none: all of them), and
    the name records give it when its model is not a choice."""

    component: str
    extra: str | None = None
    modules: tuple[str, ...] | None = None
    records_name: str | None = None


# The detector backends by name (`models.detector.backend`): the one registry that config validation,
# `detector()` and the extras check read. A new backend is one module and one line here.
DETECTORS: dict[str, DetectorBackend] = {
    "grounding-dino": DetectorBackend("mmcof_gen.models.grounding_dino:GroundingDinoDetector", "hf",
                                      ("torch", "transformers")),
    "owlv2": DetectorBackend("mmcof_gen.models.owlv2:Owlv2Detector", "hf", ("torch", "transformers")),
    "yolo-world": DetectorBackend("mmcof_gen.models.yolo_world:YoloDetector", "yolo"),
    "yoloe": DetectorBackend("mmcof_gen.models.yolo_world:YoloDetector", "yolo"),
    "rapidocr": DetectorBackend("mmcof_gen.models.ocr:OcrDetector", records_name=ENGINE_NAME),
}
DetectRequest = tuple[Image.Image, Sequence[str]]
"""One frame and the phrases to find in it."""


class DetectorError(RuntimeError):
    """A detector that cannot be built or run; the message names the model and the fix."""


class DetectorConfig(BaseModel):
    """Which detector to run and how strict it is."""

    model_config = ConfigDict(extra="forbid")

    backend: one_of(DETECTORS) = Field("grounding-dino", description="a name of DETECTORS")
    model: str = Field("IDEA-Research/grounding-dino-tiny",
                       description="hub id or local folder (transformers), or a .pt/.yaml file (ultralytics)")
    box_threshold: float = Field(0.3, ge=0, le=1, description="detections scoring at or below this are dropped")
    text_threshold: float = Field(0.25, ge=0, le=1,
                                  description="GroundingDINO: a token belongs to the label above this score")
    max_detections: int = Field(10, ge=1, description="per frame, best scores kept")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps")
    nms_iou: float = Field(0.5, gt=0, le=1, description="boxes of one label overlapping more than this are merged")
    batch_size: int = Field(8, ge=1, description="frames per forward pass")
    image_size: int = Field(640, ge=32, multiple_of=32, description="YOLO: frames are letterboxed to this square side")
    text_embeddings: Path | None = Field(
        None, description="YOLO: a torch file {phrase: text-encoder embedding} used instead of the net's CLIP")

    @property
    def name(self) -> str:
        """The detector as records name it (RapidOCR has no model to choose)."""
        return DETECTORS[self.backend].records_name or f"{self.backend}:{self.model}"


class Detector(Protocol):
    """Finds phrases in frames; one list of detections per request, in that request's order.

    Synchronous and meant for one caller at a time (YOLO backends set the head's classes per batch):
    an async agent calls it through `asyncio.to_thread`, a Ray actor serialises its batches. A detector
    that sets `concurrent = True` (the Ray executor's proxy, which batches concurrent callers) is called
    without that lock.
    """

    name: str

    def detect(self, requests: Sequence[DetectRequest]) -> list[list[Detection]]:
        """Detections per request: boxes in that frame's pixels, labels among its phrases, best first."""
        ...


def clean_phrases(phrases: Sequence[str]) -> list[str]:
    """Phrases stripped, empty ones dropped, duplicates kept once (first occurrence wins)."""
    return list(dict.fromkeys(p.strip() for p in phrases if p.strip()))


def detect_in_batches(requests: Sequence[DetectRequest], batch_size: int,
                      detect_batch: Callable[[list[Image.Image], list[list[str]]], list[list[Detection]]],
                      ) -> list[list[Detection]]:
    """Every backend's `detect`: `detect_batch(frames, phrases)` (one forward pass) on chunks of
    `batch_size` requests, answers put back in request order.

    A request without phrases needs no forward pass and gets no detections.
    """
    todo = [(index, frame.convert("RGB"), cleaned) for index, (frame, phrases) in enumerate(requests)
            if (cleaned := clean_phrases(phrases))]
    results: list[list[Detection]] = [[] for _ in requests]
    for start in range(0, len(todo), batch_size):
        chunk = todo[start: start + batch_size]
        found = detect_batch([frame for _, frame, _ in chunk], [phrases for _, _, phrases in chunk])
        for (index, _, _), detections in zip(chunk, found):
            results[index] = detections
    return results


def finish(boxes, scores, labels: Sequence[str], size: tuple[int, int], config: DetectorConfig) -> list[Detection]:
    """One frame's raw candidates (float xyxy frame-pixel boxes, scores, labels) -> its detections.

    Rounds each box outward to whole pixels inside the frame (what lies outside, e.g. in OWLv2's
    padding, is gone), drops empty boxes and scores at or below the box threshold, suppresses overlapping
    boxes of one label (OWLv2 and GroundingDINO return near-copies of an object from neighbouring
    queries) and keeps the best `max_detections`.
    """
    import torch
    from torchvision.ops import batched_nms

    candidates = []
    for xyxy, score, label in zip(torch.as_tensor(boxes).reshape(-1, 4).tolist(),
                                  torch.as_tensor(scores).reshape(-1).tolist(), labels):
        if score > config.box_threshold:
            try:
                candidates.append(Detection(box=clip_box(xyxy, *size), score=score, label=label))
            except InvalidBox:  # nothing of it inside the frame, or not a finite box
                continue
    if not candidates:
        return []
    names = list(dict.fromkeys(d.label for d in candidates))
    kept = batched_nms(torch.tensor([d.box for d in candidates], dtype=torch.float32),
                       torch.tensor([d.score for d in candidates]),
                       torch.tensor([names.index(d.label) for d in candidates]), config.nms_iou)
    return [candidates[i] for i in kept[: config.max_detections].tolist()]


class TransformersDetector:
    """What the transformers backends share: processor and model loaded once (`model_class`, a transformers
    class name; `example`, a hub id for the error message), requests answered in batches of `detect_batch`."""

    model_class: str
    example: str

    def __init__(self, config: DetectorConfig):
        import transformers

        self.config = config
        self.name = f"{config.backend}:{config.model}"
        self.processor, self.model = load_pretrained(config, getattr(transformers, self.model_class), self.example)

    def detect(self, requests: Sequence[DetectRequest]) -> list[list[Detection]]:
        return detect_in_batches(requests, self.config.batch_size, self.detect_batch)

    def forward(self, inputs):
        """The model on processor outputs, on the configured device, without autograd."""
        import torch

        with torch.inference_mode():
            return self.model(**inputs.to(self.config.device))


def load_pretrained(config: DetectorConfig, model_class, example: str):
    """Processor and model from a hub id or a local folder (one `from_pretrained` path for both)."""
    from transformers import AutoProcessor

    advice = f"set detector.model to a hub id such as {example} or a folder saved with save_pretrained"
    local = Path(config.model).expanduser()
    if (local.is_absolute() or config.model.startswith((".", "~"))) and not local.is_dir():
        raise DetectorError(f"{config.backend} detector model folder {config.model} does not exist; {advice}")
    name = str(local) if local.is_dir() else config.model
    try:
        processor = AutoProcessor.from_pretrained(name)
        model = model_class.from_pretrained(name).to(config.device).eval()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise load_failure(config, exc, advice) from None
    return processor, model


def load_failure(config: DetectorConfig, exc: Exception, advice: str) -> DetectorError:
    """One line naming the model, the first line of what went wrong, and what would work."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DetectorError(f"{config.backend} detector model {config.model!r} could not be loaded ({reason}); {advice}")
