"""RapidOCR's settings as the VLM agent's reader, and its name in records: settings only, so that the
pipeline's configuration reads them without importing the engine (models/ocr.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ENGINE_NAME = "rapidocr:PP-OCRv4"
"""RapidOCR as records name it: the offline default's engine, and the `rapidocr` backend (models/ocr.py)."""


class OcrReaderConfig(BaseModel):
    """RapidOCR as the VLM agent's reader (`models.reader: {backend: rapidocr}`), with the acuity rule of the
    offline default: a line is read only when it is at least `min_read_height` pixels tall in the image shown.
    Unset values are those of the pipeline's `ocr` section (filled in by `PipelineConfig`)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["rapidocr"]
    min_read_height: int | None = Field(None, ge=1, description="none: ocr.min_read_height")
    min_score: float | None = Field(None, ge=0, le=1, description="none: ocr.min_score")

    @property
    def name(self) -> str:
        return ENGINE_NAME
