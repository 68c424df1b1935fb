"""Tasks from COCO-style annotations (`synthesize --coco FILE`): questions about small annotated objects,
with ground-truth boxes from the annotations and multiple-choice distractors from other categories.

The file needs `images` (id, file_name relative to the images folder, width, height), `annotations`
(image_id, category_id, bbox `[x, y, w, h]` in original pixels, iscrowd?) and `categories` (id, name,
supercategory?). It is read whole (JSON has no streaming form); each image's questions are made only
when the run reaches it. A question is asked only where the annotations make its answer certain:

- object ("What is the small object in the bottom left part of the image?"): a small object that is the
  only annotated object whose centre lies in its cell of the 3x3 grid; distractors are other categories,
  same supercategory first (so they are plausible), never one annotated in the image.
- position ("Is the cup on the left or right side of the clock?"): two small objects, each the only one
  of its category, apart horizontally; options left / right.
- counting ("How many birds are there in the image?"): 1 to 8 instances, all small, none crowd-annotated;
  the ground-truth box is the box around them all; options are nearby counts.

"Small" is `tasks.max_area_fraction` of the image; at most `tasks.max_per_image` questions per image.
Options are shuffled with a fixed seed per question, so re-runs make the same tasks.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcof_gen.config import TextTasksConfig
from mmcof_gen.errors import ConfigError
from mmcof_gen.positions import cell_of, position_name
from mmcof_gen.schema import Box, ErrorRecord, invalid_fields, short_hash
from mmcof_gen.tasks.sources import GivenQuestion, ImageUnit, WorkSource, image_inside
from mmcof_gen.tasks.vstar import xywh_boxes

MAX_COUNT = 8
_IRREGULAR = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "skis": "skis",
              "scissors": "scissors", "glasses": "glasses"}


class CocoImage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int | str
    file_name: str = Field(min_length=1)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CocoAnnotation(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image_id: int | str
    category_id: int | str
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0


class CocoCategory(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: int | str
    name: str = Field(min_length=1)
    supercategory: str = ""


class CocoFile(BaseModel):
    model_config = ConfigDict(extra="ignore")
    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory] = Field(min_length=1)


def coco_source(images_dir: Path, coco_file: Path, config: TextTasksConfig) -> WorkSource:
    """Units for the annotated images in file order; an image outside `images_dir` is an error record."""
    try:
        data = CocoFile.model_validate(json.loads(coco_file.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--coco {coco_file} is not a readable JSON file ({exc}); pass a COCO annotation file") from None
    except ValidationError as exc:
        problem = invalid_fields(exc, limit=3)
        raise ConfigError(f"--coco {coco_file}: not COCO-style annotations ({problem}); it needs images "
                          "(id, file_name, width, height), annotations (image_id, category_id, bbox) and categories") from None
    categories = {c.id: c for c in data.categories}
    by_image: dict[int | str, list[CocoAnnotation]] = defaultdict(list)
    for annotation in data.annotations:
        if annotation.category_id in categories:
            by_image[annotation.image_id].append(annotation)
    errors, images = [], []
    for image in data.images:
        path = image_inside(images_dir, image.file_name)
        if path is None or not path.is_file():
            why = "points outside the images folder" if path is None else "does not exist in the images folder"
            errors.append(ErrorRecord(id="q-" + short_hash(coco_file.name, str(image.id)), stage="tasks",
                                      image=image.file_name[:300],
                                      reason=f"{coco_file.name}: image {image.id} {image.file_name[:300]!r} {why}; refused"))
        else:
            images.append(image)

    def units():
        for image in images:
            questions = image_questions(image, by_image.get(image.id, []), categories, config)
            if questions:
                yield ImageUnit(images_dir / image.file_name, Path(image.file_name).as_posix(), questions,
                                f"coco:{coco_file.name}")

    return WorkSource(units(), errors)


def image_questions(image: CocoImage, annotations: list[CocoAnnotation], categories: dict[int | str, CocoCategory],
                    config: TextTasksConfig) -> list[GivenQuestion]:
    """The questions the annotations of one image answer with certainty (see the module docstring)."""
    width, height = image.width, image.height
    objects = [(categories[a.category_id].name, _box(a, width, height), bool(a.iscrowd)) for a in annotations]
    small = [(b[2] - b[0]) * (b[3] - b[1]) <= config.max_area_fraction * width * height for _, b, _ in objects]
    by_name: dict[str, list[int]] = defaultdict(list)
    occupancy: dict[tuple[int, int], int] = defaultdict(int)
    for index, (name, box, _) in enumerate(objects):
        by_name[name].append(index)
        occupancy[cell_of(box, width, height)] += 1
    supercategory = {c.name: c.supercategory for c in categories.values()}

    def ask(question: str, answer: str, options: list[str], bbox: list[Box], kind: str,
            position: str | None = None) -> GivenQuestion:
        random.Random(short_hash(image.file_name, question)).shuffle(options)
        return GivenQuestion(image=image.file_name, question=question, options=options, answer=answer, bbox=bbox,
                             question_type=kind, position=position)

    questions = []
    for index, (name, box, crowd) in enumerate(objects):  # object
        cell = cell_of(box, width, height, config.cell_margin)
        if not small[index] or crowd or cell is None or occupancy[cell_of(box, width, height)] > 1:
            continue
        others = sorted(set(supercategory) - set(by_name))  # never a category annotated in the image
        random.Random(short_hash(image.file_name, str(box))).shuffle(others)
        others.sort(key=lambda other: not supercategory[name] or supercategory[other] != supercategory[name])
        if len(others) >= 3:
            position = position_name(cell)
            questions.append(ask(f"What is the small object in the {position} part of the image?", name,
                                 [name, *others[:3]], [box], "object", position))

    singles = [i for i, (name, _, crowd) in enumerate(objects) if small[i] and not crowd and len(by_name[name]) == 1]
    for first, second in zip(singles, singles[1:]):  # position
        (name1, box1, _), (name2, box2, _) = objects[first], objects[second]
        if box1[2] <= box2[0] or box2[2] <= box1[0]:
            side = "left" if box1[2] <= box2[0] else "right"
            questions.append(ask(f"Is the {name1} on the left or right side of the {name2}?", side,
                                 ["left", "right"], [box1, box2], "position"))

    for name, members in by_name.items():  # counting
        if len(members) > MAX_COUNT or not all(small[i] and not objects[i][2] for i in members):
            continue
        boxes = [objects[i][1] for i in members]
        union = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))
        lowest = max(1, len(members) - 1)
        questions.append(ask(f"How many {plural(name)} are there in the image?", str(len(members)),
                             [str(n) for n in range(lowest, lowest + 4)], [union], "counting"))
    return questions[: config.max_per_image]


def plural(name: str) -> str:
    """English plural of a category name ("traffic light" -> "traffic lights", "bus" -> "buses")."""
    head, _, last = name.rpartition(" ")
    if last in _IRREGULAR:
        word = _IRREGULAR[last]
    elif last.endswith(("s", "sh", "ch", "x", "z")):
        word = last + "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def _box(annotation: CocoAnnotation, width: int, height: int) -> Box:
    """The annotation's `[x, y, w, h]` as `[x1, y1, x2, y2]` original pixels, inside the image."""
    x1, y1, x2, y2 = xywh_boxes([annotation.bbox], Path("coco"))[0]
    return max(0, x1), max(0, y1), min(width, max(x2, x1 + 1)), min(height, max(y2, y1 + 1))
