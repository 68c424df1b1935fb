"""YOLO-World and YOLOE through ultralytics (the optional `[yolo]` extra; ultralytics is AGPL-3.0).

`detector.model` is a checkpoint (`yolov8s-worldv2.pt`, `yoloe-11s-seg.pt`, a local .pt) or a model
yaml. Both models classify boxes against text embeddings of the phrases. Ultralytics computes those
with a text encoder it fetches from the net (CLIP ViT-B/32 for YOLO-World, MobileCLIP for YOLOE);
offline, `detector.text_embeddings` names a torch file `{phrase: embedding}` of that encoder's outputs.

A batch of frames is letterboxed to one square tensor (ultralytics' LetterBox: aspect kept, grey
borders, centred), run in one forward pass with the union of the batch's phrases as classes (each
frame's scores masked to its own phrases), and the boxes are mapped back with ultralytics'
`scale_boxes`, the exact inverse of that letterbox.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import ultralytics.utils.patches
from PIL import Image
from ultralytics import YOLOE, YOLOWorld
from ultralytics.data.augment import LetterBox
from ultralytics.utils.nms import non_max_suppression
from ultralytics.utils.ops import scale_boxes

from mmcof_gen.models.detector import DetectorConfig, DetectorError, DetectRequest, detect_in_batches, finish, load_failure
from mmcof_gen.schema import Detection

# Importing ultralytics replaces PIL.Image.open with a wrapper that, for any file PIL cannot identify,
# tries to pip-install pi-heif and raises something else. Put PIL's own back, so that a bad image stays
# an ImageError (imaging.py) and nothing installs itself in the middle of a run.
Image.open = getattr(ultralytics.utils.patches, "_image_open", Image.open)


def yolo_model(backend: str, source: str):
    """The ultralytics model (YOLO-World or YOLOE) of a checkpoint, a downloadable name or a yaml."""
    return (YOLOWorld if backend == "yolo-world" else YOLOE)(source, verbose=False)


def letterbox(frames: Sequence[Image.Image], side: int):
    """Frames -> one (B, 3, side, side) float tensor in [0, 1], RGB, letterboxed like ultralytics' predictor."""
    boxer = LetterBox(new_shape=(side, side), auto=False)
    images = np.stack([boxer(image=np.asarray(frame.convert("RGB"))) for frame in frames])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)


def unletterbox(boxes, side: int, frame_size: tuple[int, int]):
    """xyxy boxes in letterboxed (side x side) pixels -> float boxes in the frame's pixels."""
    width, height = frame_size
    return scale_boxes((side, side), torch.as_tensor(boxes, dtype=torch.float32).clone(), (height, width))


class YoloDetector:
    def __init__(self, config: DetectorConfig):
        self.config = config
        self.name = f"{config.backend}:{config.model}"
        advice = "set detector.model to a .pt checkpoint (a bare name is downloaded) or a model yaml"
        model = Path(config.model)
        if model.suffix not in (".pt", ".yaml", ".yml"):
            raise load_failure(config, ValueError("not a .pt or .yaml file"), advice)
        if model.parent != Path(".") and not model.is_file():
            raise load_failure(config, FileNotFoundError("no such file"), advice)
        try:
            self.model = yolo_model(config.backend, config.model).model.to(config.device).eval()
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
            raise load_failure(config, exc, advice) from None
        self.embeddings: dict[str, torch.Tensor] = {}
        if config.text_embeddings is not None:
            try:
                stored = torch.load(config.text_embeddings, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError) as exc:
                raise DetectorError(f"detector.text_embeddings {config.text_embeddings} could not be read ({exc}); "
                                    f"it must be a torch file of {{phrase: 1-D tensor}}") from None
            self.embeddings = {phrase: vector.reshape(-1).float() for phrase, vector in stored.items()}

    def embed(self, phrases: list[str]):
        """(1, n, d) text-encoder embeddings of the phrases, from the file or from ultralytics' text model."""
        missing = [p for p in phrases if p not in self.embeddings]
        if missing and self.config.text_embeddings is not None:
            raise DetectorError(f"phrases {missing} have no embedding in detector.text_embeddings "
                                f"{self.config.text_embeddings}; add them, or unset it to use the net's text encoder")
        if missing:
            options = {"without_reprta": True} if self.config.backend == "yoloe" else {}
            computed = self.model.get_text_pe(missing, cache_clip_model=True, **options)
            self.embeddings.update(zip(missing, computed.reshape(len(missing), -1).float().cpu()))
        return torch.stack([self.embeddings[p] for p in phrases])[None]

    def detect(self, requests: Sequence[DetectRequest]) -> list[list[Detection]]:
        return detect_in_batches(requests, self.config.batch_size, self.detect_batch)

    def detect_batch(self, frames: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        classes = list(dict.fromkeys(p for frame_phrases in phrases for p in frame_phrases))
        embeddings = self.embed(classes).to(self.config.device)
        images = letterbox(frames, self.config.image_size).to(self.config.device)
        self.model.model[-1].nc = len(classes)
        with torch.inference_mode():
            if self.config.backend == "yolo-world":
                raw = self.model.predict(images, txt_feats=embeddings)
            else:
                raw = self.model.predict(images, tpe=embeddings)
        raw = raw[0] if isinstance(raw, (tuple, list)) else raw
        return self.to_detections(raw, classes, frames, phrases)

    def to_detections(self, raw, classes: list[str], frames: Sequence[Image.Image],
                      phrases: Sequence[Sequence[str]]) -> list[list[Detection]]:
        """Raw head output (B, 4 + classes [+ masks], anchors) -> detections per frame in frame pixels."""
        raw = raw.clone()
        for row, frame_phrases in enumerate(phrases):
            foreign = [4 + i for i, c in enumerate(classes) if c not in frame_phrases]
            raw[row, foreign] = 0  # a frame is only scored against its own phrases
        kept = non_max_suppression(raw, conf_thres=self.config.box_threshold, iou_thres=self.config.nms_iou,
                                   nc=len(classes))
        found = []
        for rows, frame in zip(kept, frames):
            boxes = unletterbox(rows[:, :4].cpu(), self.config.image_size, frame.size)
            labels = [classes[int(c)] for c in rows[:, 5].tolist()]
            found.append(finish(boxes, rows[:, 4].cpu(), labels, frame.size, self.config))
        return found
