"""Synthesis of text-reading questions from OCR at full resolution (the offline default's task source).

A text makes a question when it is read confidently, is small relative to the image, and is the only
text in its grid cell, so "the small text in the bottom left part" names it without giving it away.
Its ground truth is kept only when two independent readings of the line agree exactly, spaces and
digits included (`READINGS`), their letters and digits are those of the whole-image reading, and the
line's pixels show as many word gaps as the reading has spaces (`word_gaps`); a disagreement drops the
question with the readings as the reason.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from mmcof_gen.agent.verify import normalize_text
from mmcof_gen.config import TextTasksConfig
from mmcof_gen.imaging import scale_box
from mmcof_gen.models.ocr import TextHit
from mmcof_gen.positions import cell_of, position_name
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import RejectedTask, Task, task_id

# The two readings of a candidate line: its own tight crop scaled to a line height (px) and read with the
# detector's boxes grown this much. On the quality benchmark's scenes, the whole-image reading dropped the
# space of 5 of 8 signs ("GATE85"); the 64-px reading with tight boxes spelled 8 of 8 right, the 44-px one
# 6 of 8, and where the two agreed they were right (benchmarks/bench_quality.py).
READINGS = ((64, 0.9), (44, 1.2))

ReadAgain = Callable[[TextHit, int, float], "str | None"]
WORD_GAP = 0.3  # a blank run of columns at least this share of the ink height separates words
NARROW = 0.5  # ink narrower than this share of its height ("1", "I") has wide blank sides of its own


def word_gaps(image: Image.Image, box) -> tuple[int, int] | None:
    """How many word gaps the line's own pixels show, as (certain, possible): runs of blank columns between
    its ink at least WORD_GAP of the ink height wide; one next to narrow ink ("1") is only possible. None
    when the letters cannot be told apart (fewer blank runs than half the ink's width in ink heights, e.g.
    text too blurred) or there is no contrast. PP-OCR drops spaces, also wide ones: this counts them
    without it (on the benchmark's first scenes: the one space of each of the 6 two-word lines, also of
    those OCR read as "WEST23", "AISLEF9" and "GATE85"; None for a 12-px "TOWER J5")."""
    grey = np.asarray(image.crop(tuple(box)).convert("L"), dtype=np.float32)
    low, high = np.percentile(grey, 5), np.percentile(grey, 95)
    if high - low < 40:
        return None
    ink = grey < (low + high) / 2
    ink[ink.mean(axis=1) > 0.6] = False  # plate edges and rules run across the line: not letters
    ink[:, ink.mean(axis=0) > 0.8] = False  # nor up the box (a letter fills at most its ink height)
    rows = ink.sum(axis=1)
    columns = np.flatnonzero(ink.any(axis=0))
    if not rows.any() or len(columns) < 2:
        return None
    ink_height = int((rows > 0.15 * rows.max()).sum())
    filled = ink[:, columns[0]:columns[-1] + 1].any(axis=0)
    edges = np.flatnonzero(np.diff(filled.astype(np.int8))) + 1  # where ink and blank columns alternate
    pieces = np.split(filled, edges)
    widths = [len(piece) for piece in pieces]  # ink, blank, ink, ..., ink
    if (len(pieces) - 1) / 2 < (columns[-1] - columns[0]) / ink_height / 2:
        return None
    certain = possible = 0
    for k in range(1, len(pieces) - 1, 2):
        if widths[k] >= WORD_GAP * ink_height:
            if min(widths[k - 1], widths[k + 1]) < NARROW * ink_height:
                possible += 1
            else:
                certain += 1
    return certain, certain + possible


def spelled(text: str | None) -> str:
    """A reading as compared for agreement: exact, up to runs of white space."""
    return " ".join((text or "").split())


def synthesize_text_tasks(
    hits: list[TextHit],
    truth_size: tuple[int, int],
    original_size: tuple[int, int],
    image: str,
    image_sha256: str,
    prompts: Prompts,
    config: TextTasksConfig,
    read_again: ReadAgain,
    gaps: Callable[[TextHit], tuple[int, int] | None],
) -> tuple[list[Task], list[RejectedTask]]:
    """Tasks for one image from all text read at `truth_size`, and the candidates dropped because their
    readings disagree; ground truth boxes in original pixels. `read_again(hit, line_height, unclip)` reads
    the hit's line from its own tight crop (OcrEngine.reread), `gaps(hit)` counts its word gaps (`word_gaps`),
    both on the image at truth size."""
    width, height = truth_size
    hits = [hit for hit in hits if normalize_text(hit.text)]  # stray marks read as symbols name nothing
    occupancy: dict[tuple[int, int], int] = {}
    for hit in hits:
        cell = cell_of(hit.box, width, height)
        occupancy[cell] = occupancy.get(cell, 0) + 1
    readings = [normalize_text(hit.text) for hit in hits]

    tasks: list[Task] = []
    rejected: list[RejectedTask] = []
    for hit, reading in zip(hits, readings):
        if len(tasks) >= config.max_per_image:
            break
        x1, y1, x2, y2 = hit.box
        cell = cell_of(hit.box, width, height, config.cell_margin)
        if (
            cell is None
            or hit.score < config.min_confidence
            or not config.min_chars <= len(reading) <= config.max_chars
            or (x2 - x1) * (y2 - y1) > config.max_area_fraction * width * height
            or occupancy[cell_of(hit.box, width, height)] > 1
            or readings.count(reading) > 1
        ):
            continue
        position = position_name(cell)
        question = prompts.render("question_text", position=position)
        sx, sy = original_size[0] / width, original_size[1] / height
        box = scale_box(hit.box, sx, sy)
        (height_a, unclip_a), (height_b, unclip_b) = READINGS
        first, second = read_again(hit, height_a, unclip_a), read_again(hit, height_b, unclip_b)
        if not spelled(first) or spelled(first) != spelled(second):
            reason = f"readings disagree: {first!r} (line {height_a} px tall) vs {second!r} ({height_b} px)"
        elif normalize_text(first) != reading:  # the whole-image reading drops spaces, but its letters count
            reason = f"readings disagree: {first!r} (line {height_a} and {height_b} px tall) vs {hit.text!r} (whole image)"
        elif (seen := gaps(hit)) is None:
            reason = f"readings disagree: the letters of {first!r} cannot be told apart in its pixels"
        elif not seen[0] <= spelled(first).count(" ") <= seen[1]:
            shown = str(seen[0]) if seen[0] == seen[1] else f"{seen[0]} to {seen[1]}"
            reason = f"readings disagree: {first!r} has {spelled(first).count(' ')} space(s), its pixels {shown} word gap(s)"
        else:
            reason = None
        if reason:
            rejected.append(RejectedTask(object=hit.text, box=box, question=question, reason=reason))
            continue
        tasks.append(Task(
            id=task_id(image_sha256, question), image=image, image_sha256=image_sha256, question=question,
            answer=spelled(first), gt_boxes=[box], source="ocr-synthesis", question_type="text", position=position,
        ))
    return tasks, rejected
