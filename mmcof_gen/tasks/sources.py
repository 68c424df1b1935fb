"""Where the work comes from: a folder of images (tasks synthesised per image) or a questions file.

Work is streamed one image at a time, so a folder of 100k images never sits in memory. The other
given-question sources (a V*-format folder: `tasks.vstar.vstar_source`; COCO-style annotations:
`tasks.coco.coco_source`) make the same `ImageUnit`s and refuse images outside the images folder alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import discover_images
from mmcof_gen.schema import Box, ErrorRecord, invalid_fields, short_hash
from mmcof_gen.store import jsonl_lines


MAX_QUESTION_CHARS = 2000  # far above any real question; a longer one would go into every prompt and record


class GivenQuestion(BaseModel):
    """One line of a `--questions` JSONL file."""

    model_config = ConfigDict(extra="ignore")
    image: str = Field(min_length=1)
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    options: list[str] | None = None
    answer: str | None = None
    bbox: Box | list[Box] | None = Field(default=None, description="original-image pixels")
    question_type: str = "text"
    position: str | None = None

    @property
    def boxes(self) -> list[Box]:
        if self.bbox is None:
            return []
        return [self.bbox] if isinstance(self.bbox[0], int) else list(self.bbox)


@dataclass
class ImageUnit:
    """One image and what to ask about it (`questions` None means: synthesise tasks)."""

    path: Path
    rel: str
    questions: list[GivenQuestion] | None = None
    source: str = "folder"
    skipped: str | None = None  # why the image is kept out (exclusion list, near-duplicate); see tasks.exclusion


@dataclass
class WorkSource:
    units: Iterator[ImageUnit]
    errors: list[ErrorRecord] = field(default_factory=list)


def folder_source(images_dir: Path) -> WorkSource:
    return WorkSource(ImageUnit(path, path.relative_to(images_dir).as_posix()) for path in discover_images(images_dir))


def image_inside(images_dir: Path, rel: str) -> Path | None:
    """The image a task source names, or None when it points outside the images folder."""
    if Path(rel).is_absolute() or "\\" in rel:
        return None
    path = (images_dir / rel).resolve()
    return path if path.is_relative_to(images_dir.resolve()) else None


def _problem(exc: ValueError) -> str:
    """What is wrong with a line: each invalid field and why (pydantic's first line says only how many)."""
    if isinstance(exc, ValidationError):
        return invalid_fields(exc, limit=3)[:300]
    return str(exc)[:300]


def questions_source(images_dir: Path, questions_file: Path,
                     cannot_search: Callable[[GivenQuestion], str | None] = lambda question: None) -> WorkSource:
    """Questions grouped by image in file order; bad lines become error records, never a crash. A valid line
    the agent `cannot_search` (SearchAgent.cannot_search) refuses the file before the run: ConfigError naming
    the first such line, since every one of them would fail at every resolution."""
    by_image: dict[str, list[GivenQuestion]] = {}
    errors = []
    unsearchable: list[tuple[str, str]] = []
    for number, line in jsonl_lines(questions_file, errors="replace"):
        where = f"{questions_file.name}:{number}"
        try:
            given = GivenQuestion.model_validate(json.loads(line))
        except (json.JSONDecodeError, ValidationError) as exc:
            reason = _problem(exc)
            errors.append(ErrorRecord(id="q-" + short_hash(line), stage="tasks", image=where,
                                      reason=f"{where}: not a valid question line: {reason}"))
            continue
        path = image_inside(images_dir, given.image)
        if path is None or not path.is_file():
            why = "points outside the images folder" if path is None else "does not exist in the images folder"
            errors.append(ErrorRecord(id="q-" + short_hash(line), stage="tasks", image=given.image[:300],
                                      reason=f"{where}: image {given.image[:300]!r} {why}; refused"))
            continue
        if (why := cannot_search(given)) is not None:
            unsearchable.append((where, why))
            continue
        by_image.setdefault(given.image, []).append(given)
    if unsearchable:
        where, why = unsearchable[0]
        more = f" ({len(unsearchable) - 1} more line(s) like it)" if len(unsearchable) > 1 else ""
        raise ConfigError(f"--questions {where}: {why}{more}")
    units = (ImageUnit(images_dir / rel, rel, questions, f"questions:{questions_file.name}")
             for rel, questions in by_image.items())
    return WorkSource(units, errors)
