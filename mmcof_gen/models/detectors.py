"""The detector factory: `detector(config)` builds the configured backend of `models/detect.py`'s contract.

It sits above the backends (`grounding_dino.py`, `owlv2.py`, `yolo_world.py`, RapidOCR's `OcrDetector`), which build on detect.py,
so no module imports one that imports it back; their heavy imports happen only as one is built.
"""

from __future__ import annotations

from mmcof_gen.extras import require
from mmcof_gen.models.detect import Detector, DetectorConfig


def detector(config: DetectorConfig) -> Detector:
    """Build the configured backend; heavy imports happen only here."""
    if config.backend == "rapidocr":
        from mmcof_gen.models.ocr import OcrDetector

        return OcrDetector(config)
    if config.backend in ("yolo-world", "yoloe"):
        require("yolo", f"detector {config.backend}")
    else:
        require("hf", f"detector {config.backend}", ("torch", "transformers"))
    if config.backend == "grounding-dino":
        from mmcof_gen.models.grounding_dino import GroundingDinoDetector

        return GroundingDinoDetector(config)
    if config.backend == "owlv2":
        from mmcof_gen.models.owlv2 import Owlv2Detector

        return Owlv2Detector(config)
    from mmcof_gen.models.yolo_world import YoloDetector

    return YoloDetector(config)
