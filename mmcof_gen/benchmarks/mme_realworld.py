"""MME-RealWorld (yifanzhang114/MME-RealWorld, Apache-2.0): `MME_RealWorld.json` or `MME-RealWorld-Lite.json`.

A JSON list of `{"Question_id", "Image", "Text", "Answer choices": ["(A) ...", ..., "(E) ..."], "Ground truth":
"B", "Task": "Perception" | "Reasoning", "Subtask", "Category"}`, images relative to the JSON's folder (or
its `imgs/` folder, as the Lite archive unpacks). Its scoring (`evaluation/eval_your_results.py` and the
paper's tables): accuracy per subtask within each task, per task over its questions (`Avg`) and as the mean
of its subtasks (`Avg-C`, the paper's class average), and over all questions (`Overall`). Answers are
scored by our rules (the letter, `(B) text`, the option text), which take what its regex takes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from mmcof_gen.benchmarks.base import Benchmark, accuracy
from mmcof_gen.tasks.vstar import BenchError, BenchItem

KEYS = ("Question_id", "Image", "Text", "Answer choices", "Ground truth", "Task", "Subtask")
_CHOICE = re.compile(r"\(([A-Z])\)\s*(.*)", re.DOTALL)


def _questions(path: Path) -> list | None:
    """The JSON list when `path` is an MME-RealWorld question file, else None."""
    if not (path.is_file() and path.suffix.lower() == ".json"):
        return None
    with path.open("rb") as handle:
        if b"Answer choices" not in handle.read(1 << 16):
            return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, list) and data and isinstance(data[0], dict) and set(KEYS) <= set(data[0]) else None


def detect(path: Path) -> bool:
    return _questions(path) is not None


def _image(path: Path, name: str) -> Path:
    for root in (path.parent, path.parent / "imgs", path.parent / "data" / "imgs"):
        if (root / name).is_file():
            return root / name
    raise BenchError(f"--bench {path}: image {name!r} is neither beside it nor in its imgs/ folder; unpack the "
                     "images next to the JSON file")


def load(path: Path) -> list[BenchItem]:
    data = _questions(path)
    if data is None:
        raise BenchError(f"--bench {path}: not an MME-RealWorld JSON list with {', '.join(KEYS)}")
    items = []
    for number, row in enumerate(data):
        where = f"--bench {path}: question {row.get('Question_id', number)!r}"
        if not set(KEYS) <= set(row):
            raise BenchError(f"{where} lacks {', '.join(k for k in KEYS if k not in row)}")
        choices = [_CHOICE.fullmatch(choice.strip()) for choice in row["Answer choices"]]
        if not all(choices):
            raise BenchError(f"{where}: answer choices must read '(A) text'")
        letters, options = [m.group(1) for m in choices], [m.group(2).strip() for m in choices]
        label = row["Ground truth"].strip()
        if label not in letters:
            raise BenchError(f"{where}: ground truth {label!r} is not one of {''.join(letters)}")
        items.append(BenchItem(id=str(row["Question_id"]), image=_image(path, row["Image"]), question=row["Text"],
                               options=options, answer=options[letters.index(label)],
                               category=f"{row['Task']}/{row['Subtask']}", label=label, bench="mme-realworld"))
    return items


def title(path: Path) -> str:
    return "MME-RealWorld-Lite" if "lite" in path.name.lower() else "MME-RealWorld"


def score(records: list, items: dict[str, BenchItem]) -> dict:
    """Per task: each subtask's accuracy, Avg (over its questions) and Avg-C (mean of its subtasks); Overall."""
    detail, table = {}, {}
    for task in sorted({r.category.split("/")[0] for r in records}):
        mine = [r for r in records if r.category.split("/")[0] == task]
        subtasks = {s: accuracy([r for r in mine if r.category.split("/", 1)[1] == s])
                    for s in sorted({r.category.split("/", 1)[1] for r in mine})}
        detail[task] = {"subtasks": subtasks, "Avg": accuracy(mine),
                        "Avg-C": round(sum(subtasks.values()) / len(subtasks), 4)}
        table[f"{task} Avg"], table[f"{task} Avg-C"] = detail[task]["Avg"], detail[task]["Avg-C"]
    table["Overall"] = accuracy(records)
    return {"table": table, "detail": detail}


BENCHMARK = Benchmark(
    name="mme-realworld", files="MME-RealWorld MME_RealWorld.json / MME-RealWorld-Lite.json with its images",
    scoring="MME-RealWorld: accuracy per subtask within Perception and Reasoning, per task over its questions (Avg) "
            "and as the mean of its subtasks (Avg-C), and over all questions (Overall)",
    detect=detect, load=load, score=score, title=title)
