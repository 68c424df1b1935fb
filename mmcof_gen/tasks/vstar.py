"""Benchmark questions: V*-bench (both forms it ships in) and a generic JSONL, as one neutral record.

V*-bench (HF dataset `craigwu/vstar_bench`, repo `penghao-wu/vstar`) ships two forms side by side:
- category folders (`direct_attributes/`, `relative_position/`), each with `<name>.jpg` + `<name>.json`
  holding `target_object` (names), `bbox` (`[x, y, w, h]` per target, original pixels), `question` and
  `options` (the correct option FIRST);
- `test_questions.jsonl`, what the Chain-of-Focus eval reads: `{"image": "direct_attributes/sa_1.jpg",
  "text": "<question>\\n(A) ..\\n(B) ..\\nAnswer with the option's letter ...", "category", "label": "B",
  "question_id"}`, with the options in a fixed shuffled order.

A folder that holds `test_questions.jsonl` is read from it (so option order and letters match published
numbers) and joined with the per-image JSON for target names and boxes. A folder without it is read from
the JSON files, with the options shuffled by a fixed per-image seed (**ours**: presenting them in file
order would make "A" always right).

    items = load_bench(Path("vstar_bench"))
    items[0].question, items[0].options, items[0].answer_letter, items[0].boxes
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from mmcof_gen import cof_format
from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import IMAGE_SUFFIXES
from mmcof_gen.schema import Box, ErrorRecord, short_hash
from mmcof_gen.store import jsonl_lines
from mmcof_gen.tasks.sources import GivenQuestion, ImageUnit, WorkSource, image_inside

VSTAR_QUESTIONS = "test_questions.jsonl"
_OPTION_LINE = re.compile(r"\(([A-Z])\) (.*)")


class BenchError(ConfigError):
    """A benchmark file that cannot be read; the message names the file (and line) and the fix."""


@dataclass
class BenchItem:
    """One benchmark question; `answer` is the option text for multiple choice, `boxes` original pixels.

    `image` is a file, or an image inside the benchmark file (`benchmarks.embedded.EmbeddedImage`)."""

    id: str
    image: Path
    question: str
    options: list[str] | None
    answer: str | None
    category: str
    targets: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    text: str | None = None  # V*'s question text as shipped (test_questions.jsonl), which the release sends verbatim
    label: str | None = None  # ... and its answer letter
    bench: str = "vstar"  # its benchmark (`benchmarks.BENCHMARKS`), which scores it
    group: str = ""  # a scoring group within a category (HR-Bench's cycle_category)

    @property
    def answer_letter(self) -> str | None:
        if self.options and self.answer in self.options:
            return cof_format.option_letter(self.options.index(self.answer))
        return None


class BenchLine(GivenQuestion):
    """One line of a generic benchmark JSONL: `image`, `question`, `options`?, `answer`?, `bbox`?, `category`?."""

    id: str | None = None
    category: str = "all"


def load_bench(path: Path) -> list[BenchItem]:
    """The items of a V* folder, a V* `test_questions.jsonl`, or a generic JSONL (image, question, ...)."""
    path = Path(path)
    if path.is_dir():
        if (path / VSTAR_QUESTIONS).is_file():
            return load_vstar_questions(path / VSTAR_QUESTIONS)
        return load_vstar_folders(path)
    if not path.is_file():
        raise BenchError(f"--bench {path} does not exist; pass a V*-bench folder or a JSONL file")
    first = next((line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()), "{}")
    try:
        is_vstar = {"text", "label"} <= set(json.loads(first))
    except (json.JSONDecodeError, TypeError):
        is_vstar = False
    return load_vstar_questions(path) if is_vstar else load_jsonl(path)


def load_vstar_folders(root: Path) -> list[BenchItem]:
    """The category folders of V*-bench: every `<name>.json` beside its image, sorted by path."""
    items = []
    for annotation in sorted(root.glob("*/*.json")):
        image = _image_beside(annotation)
        if image is None:
            raise BenchError(f"{annotation} has no image beside it ({annotation.stem}.jpg); the V* folder is incomplete")
        data = _read_annotation(annotation)
        rel = image.relative_to(root).with_suffix("").as_posix()
        correct, options = data["options"][0], list(data["options"])
        random.Random(rel).shuffle(options)
        items.append(BenchItem(id=rel, image=image, question=data["question"], options=options, answer=correct,
                               category=annotation.parent.name, targets=list(data.get("target_object", [])),
                               boxes=xywh_boxes(data.get("bbox", []), annotation)))
    if not items:
        raise BenchError(f"--bench {root} holds neither {VSTAR_QUESTIONS} nor category folders of <name>.jpg + "
                         "<name>.json; pass the V*-bench folder (HF dataset craigwu/vstar_bench)")
    return items


def load_vstar_questions(questions_file: Path) -> list[BenchItem]:
    """V*'s `test_questions.jsonl` (images relative to its folder), joined with per-image JSON where present."""
    root = questions_file.parent
    items = []
    for where, row in _jsonl_rows(questions_file):
        try:
            image, text, label = root / row["image"], row["text"], row["label"]
        except KeyError as exc:
            raise BenchError(f"{where}: a V* question line needs image, text and label (missing {exc})") from None
        if not image.is_file():
            raise BenchError(f"{where}: image {row['image']!r} is not in {root}; pass the complete V* folder")
        question, options = split_options(text)
        if options:
            index = ord(label) - ord("A") if len(label) == 1 else -1
            if not 0 <= index < len(options):
                raise BenchError(f"{where}: label {label!r} is not one of the option letters")
            answer = options[index]
        else:
            answer = label
        annotation = image.with_suffix(".json")
        data = _read_annotation(annotation) if annotation.is_file() else {}
        items.append(BenchItem(id=Path(row["image"]).with_suffix("").as_posix(), image=image, question=question,
                               options=options, answer=answer,
                               category=row.get("category") or Path(row["image"]).parent.name or "all",
                               targets=list(data.get("target_object", [])),
                               boxes=xywh_boxes(data.get("bbox", []), annotation), text=text, label=label))
    return _unique_ids(items)


def load_jsonl(path: Path) -> list[BenchItem]:
    """A generic JSONL of `{"image", "question", "options"?, "answer"?, "category"?, "bbox"?, "id"?}`.

    Image paths are absolute or relative to the file's folder; a multiple-choice answer may be the option
    text or its letter.
    """
    items = []
    for where, row in _jsonl_rows(path):
        try:
            line = BenchLine.model_validate(row)
        except ValidationError as exc:
            raise BenchError(f"{where}: not a valid benchmark line: {str(exc).splitlines()[0]}") from None
        image = path.parent / line.image
        if not image.is_file():
            raise BenchError(f"{where}: image {line.image!r} does not exist (paths are relative to {path.parent})")
        answer = line.answer
        if line.options and answer is not None and answer not in line.options:
            letters = [cof_format.option_letter(i) for i in range(len(line.options))]
            if answer.strip("() .") not in letters:
                raise BenchError(f"{where}: answer {answer!r} is neither an option nor an option letter")
            answer = line.options[letters.index(answer.strip("() ."))]
        items.append(BenchItem(id=line.id or short_hash(line.image, line.question), image=image,
                               question=line.question, options=line.options, answer=answer,
                               category=line.category, boxes=line.boxes))
    return _unique_ids(items)


def split_options(text: str) -> tuple[str, list[str] | None]:
    """Undo the V* question text: `(question, options)` such that `cof_format.question_text` rebuilds it.

    >>> split_options("Is it red?\\n(A) yes\\n(B) no\\nAnswer with the option's letter from the given choices directly.")
    ('Is it red?', ['yes', 'no'])
    """
    lines = text.rstrip("\n").split("\n")
    if lines and lines[-1].strip() in (cof_format.MC_INSTRUCTION, cof_format.OPEN_INSTRUCTION):
        lines = lines[:-1]
    options: list[str] = []
    while len(lines) > 1 and (match := _OPTION_LINE.fullmatch(lines[-1].strip())):
        options.insert(0, match.group(2).strip())
        lines = lines[:-1]
        if match.group(1) == "A":
            break
    return "\n".join(lines).strip(), options or None


def _jsonl_rows(path: Path):
    for number, line in jsonl_lines(path):
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchError(f"{where}: not valid JSON ({exc.msg}); fix or remove the line") from None
        if not isinstance(row, dict):
            raise BenchError(f"{where}: a line must be a JSON object")
        yield where, row


def _image_beside(annotation: Path) -> Path | None:
    """The image named like the annotation: the first image suffix found, lower case before upper."""
    suffixes = (*IMAGE_SUFFIXES, *(s.upper() for s in IMAGE_SUFFIXES))
    return next((p for s in suffixes if (p := annotation.with_suffix(s)).is_file()), None)


def _read_annotation(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path}: not a readable V* annotation ({exc})") from None
    if not isinstance(data, dict) or not data.get("question") or not data.get("options"):
        raise BenchError(f"{path}: a V* annotation needs question and options (target_object and bbox optional)")
    return data


def xywh_boxes(bboxes: list, where: Path) -> list[Box]:
    """V* boxes are `[x, y, w, h]`; ours are `[x1, y1, x2, y2]` (original-image pixels)."""
    try:
        return [(round(x), round(y), round(x + w), round(y + h)) for x, y, w, h in bboxes]
    except (TypeError, ValueError):
        raise BenchError(f"{where}: bbox must be a list of [x, y, w, h]") from None


def _unique_ids(items: list[BenchItem]) -> list[BenchItem]:
    """Several questions on one image keep distinct ids (`<id>#2`, ...), so results never collide."""
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
        if seen[item.id] > 1:
            item.id = f"{item.id}#{seen[item.id]}"
    return items


VSTAR_QUESTION_TYPES = {"direct_attributes": "attribute", "relative_position": "position"}


def vstar_source(root: Path) -> WorkSource:
    """A V*-format folder as the task source of `synthesize`: each image with its questions (options in the
    order `load_bench` gives them, answer as option text, target boxes in original pixels).

    An image the questions file places outside `root` is refused with an error record.
    """
    by_image: dict[str, list[GivenQuestion]] = {}
    errors = []
    try:
        items = load_bench(root)
    except BenchError as exc:  # its messages name eval's flag
        raise BenchError(str(exc).replace("--bench", "--images", 1)) from None
    for item in items:
        rel = item.image.relative_to(root).as_posix() if item.image.is_relative_to(root) else str(item.image)
        if image_inside(root, rel) is None:
            errors.append(ErrorRecord(id="q-" + short_hash(rel, item.question), stage="tasks", image=rel[:300],
                                      reason=f"V* question {item.id!r}: image {rel[:300]!r} points outside the "
                                             "images folder; refused"))
            continue
        by_image.setdefault(rel, []).append(GivenQuestion(
            image=rel, question=item.question, options=item.options, answer=item.answer, bbox=item.boxes or None,
            question_type=VSTAR_QUESTION_TYPES.get(item.category, item.category)))
    units = (ImageUnit(root / rel, rel, questions, f"vstar:{root.name}") for rel, questions in by_image.items())
    return WorkSource(units, errors)


def is_vstar_folder(root: Path) -> bool:
    """A folder in the V* layout: `test_questions.jsonl`, or a `<category>/<name>.json` with a question beside its image."""
    if (root / VSTAR_QUESTIONS).is_file():
        return True
    annotation = next((a for a in sorted(root.glob("*/*.json")) if _image_beside(a) is not None), None)
    try:
        data = json.loads(annotation.read_text(encoding="utf-8")) if annotation else None
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "question" in data and "options" in data
