"""TreeBench (HaochenWang/TreeBench, Apache-2.0): `TreeBench.tsv` (VLMEvalKit layout) or its parquet.

405 multiple-choice questions on SA-1B images: `index, image (base64), question, A.., answer, category
("Perception/OCR", "Reasoning/Ordering", ...), target_instances` (the target boxes `[[x1, y1, x2, y2], ...]`,
original-image pixels). Its scoring (VLMEvalKit `TreeBench.evaluate`, `utils/treebench.py`): accuracy over
all questions (`Overall`), per task and per subtask; and `mIoU`, the mean over questions of each question's
IoU: for each target box the best IoU with any box the model gave, averaged over the targets (0 when the
model gave no box; 1 when the question has no target but the model gave a box). The boxes the model gave
are here the zoom boxes of its episode, converted from frame pixels to original-image pixels.
"""

from __future__ import annotations

import ast
from pathlib import Path

from mmcof_gen.benchmarks.base import Benchmark, accuracy
from mmcof_gen.benchmarks.embedded import row_item, table_columns, table_rows
from mmcof_gen.imaging import iou
from mmcof_gen.tasks.vstar import BenchError, BenchItem

COLUMNS = {"question", "answer", "category", "target_instances", "image"}


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".tsv", ".parquet") and COLUMNS <= set(table_columns(path))


def _boxes(path: Path, row: dict) -> list[tuple]:
    try:
        boxes = ast.literal_eval(row["target_instances"].strip() or "[]")
        return [tuple(float(v) for v in box) for box in boxes if len(box) == 4]
    except (ValueError, SyntaxError, TypeError):
        raise BenchError(f"--bench {path}: row {row.get('index')!r}: target_instances must be a list of "
                         "[x1, y1, x2, y2]") from None


def load(path: Path) -> list[BenchItem]:
    return [row_item(path, row, "treebench", row["category"].strip(), boxes=_boxes(path, row))
            for row in table_rows(path)]


def title(path: Path) -> str:
    return "TreeBench"


def original_boxes(record) -> list[tuple[float, float, float, float]]:
    """The record's zoom boxes in original-image pixels (frame pixels scaled by image size / frame size)."""
    (fw, fh), (w, h) = record.frame_size, record.image_size
    if not (fw and fh and w and h):
        return []
    return [(x1 * w / fw, y1 * h / fh, x2 * w / fw, y2 * h / fh) for x1, y1, x2, y2 in record.zooms]


def box_iou(predicted: list, targets: list) -> float:
    """One question's IoU as TreeBench computes it (module docstring)."""
    if not predicted:
        return 0.0
    if not targets:
        return 1.0
    return sum(max(iou(target, box) for box in predicted) for target in targets) / len(targets)


def score(records: list, items: dict[str, BenchItem]) -> dict:
    tasks = sorted({r.category.split("/")[0] for r in records})
    subtasks = sorted({r.category for r in records})
    ious = [box_iou(original_boxes(r), items[r.item].boxes) for r in records]
    table = {"Overall": accuracy(records), "mIoU": round(sum(ious) / len(ious), 4) if ious else 0.0}
    table.update({task: accuracy([r for r in records if r.category.split("/")[0] == task]) for task in tasks})
    detail = {"subtasks": {s: accuracy([r for r in records if r.category == s]) for s in subtasks},
              "iou": {r.item: round(v, 4) for r, v in zip(records, ious)}}
    return {"table": table, "detail": detail}


BENCHMARK = Benchmark(
    name="treebench", files="TreeBench TreeBench.tsv or .parquet (target_instances boxes)",
    scoring="TreeBench: accuracy overall, per task and per subtask; mIoU of the episode's zoom boxes (original-image "
            "pixels) against the target boxes, each target matched to its best box, averaged over questions",
    detect=detect, load=load, score=score, title=title)
