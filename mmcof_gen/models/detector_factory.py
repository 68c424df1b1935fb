"""The detector factory: `detector(config)` builds the backend `models/detector.py`'s DETECTORS names.

The backends (`grounding_dino.py`, `owlv2.py`, `yolo_world.py`, RapidOCR's `OcrDetector`) build on detector.py and
are imported by the name their registration gives, only as one is built, so their heavy imports wait until then.
"""

from __future__ import annotations

from mmcof_gen.extras import require
from mmcof_gen.models.detector import DETECTORS, Detector, DetectorConfig
from mmcof_gen.schema import named_object


def detector(config: DetectorConfig) -> Detector:
    """Build the configured backend of DETECTORS; heavy imports happen only here."""
    backend = DETECTORS[config.backend]
    if backend.extra:
        require(backend.extra, f"detector {config.backend}", backend.modules)
    return named_object(backend.component)(config)
