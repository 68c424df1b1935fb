"""Synthesis of text-reading questions from OCR at full resolution (the offline default's task source).

A text makes a question when it is read confidently, is small relative to the image, and is the only
text in its grid cell, so "the small text in the bottom left part" names it without giving it away.
Its ground truth is kept only when two independent readings of the line from its own tight crop
(`READINGS`) have the letters and digits of the whole-image reading, and its spaces are those the line's
pixels show (`word_gaps`): as both rereads spell them, or placed at the pixels' gaps between the letters
both rereads locate on either side (`placed`); otherwise the question is dropped with the readings as the
reason. PP-OCR drops spaces, so its spelling alone is never trusted with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
from PIL import Image

from mmcof_gen.answers import normalize_text
from mmcof_gen.config import PipelineConfig, TextTasksConfig
from mmcof_gen.imaging import scale_box
from mmcof_gen.models.ocr import OcrEngine, TextHit
from mmcof_gen.positions import cell_of, position_name
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import ErrorRecord, ImageTasks, RejectedTask, Task, task_id
from mmcof_gen.tasks.base import OnLoop, image_tasks, task_prompts, truth_image
from mmcof_gen.tasks.sources import ImageUnit

if TYPE_CHECKING:
    from mmcof_gen.agent.base import SearchAgent

# The two readings of a candidate line: its own tight crop scaled to a line height (px) and read with the
# detector's boxes grown this much. On the quality benchmark's scenes, the whole-image reading dropped the
# space of 5 of 8 signs ("GATE85"); the 64-px reading with tight boxes spelled 8 of 8 right, the 44-px one
# 6 of 8, and where the two agreed they were right (benchmarks/bench_quality.py).
READINGS = ((64, 0.9), (44, 1.2))

ReadAgain = Callable[[TextHit, int, float], "TextHit | None"]
WORD_GAP = 0.3  # a blank run of columns at least this share of the ink height separates words
NARROW = 0.5  # ink narrower than this share of its height ("1", "I") has wide blank sides of its own
LOOK_PAST = 3  # how far past a line's OCR box its pixels are searched for more of the line, in box heights
ONE_WORD_GAP = 1.2  # the widest word gap looked for past a box that shows none, in ink heights (a space of a
#                     wide font with letters spaced 0.16 of the font size apart is about 0.9)


class Gap(NamedTuple):
    """A word gap in a line's pixels: the x of its middle in image pixels, and whether it must be a space
    (False: it is next to narrow ink such as a "1", whose own blank sides may look like a space)."""

    x: float
    certain: bool


def word_gaps(image: Image.Image, box) -> list[Gap] | None:
    """The word gaps the line's own pixels show: runs of blank columns between its letters at least WORD_GAP of
    the ink height wide. Letters are the connected pieces of ink (dark or light: the lesser side of the box) in
    its rows that are neither wide (a plate's edge, tilted or not, or a rule: wider than half the box), tall (a
    post) nor cut by those rows, nor specks. None when the letters cannot be told apart (fewer blank runs than
    half the ink's width in ink heights, e.g. text too blurred, or letters joined to the plate's edge), when a
    letter-sized piece past the box continues the line (`_goes_on`: it holds only part of the line), or
    there is no contrast. PP-OCR drops spaces, also wide ones: this finds them without it (on the demo scenes:
    the one space of each of the 12 two-word signs, also of those every reading spelled "WEST4", "BANKZ7")."""
    x1, y1, x2, y2 = box
    left, right = max(0, x1 - LOOK_PAST * (y2 - y1)), min(image.width, x2 + LOOK_PAST * (y2 - y1))
    grey = np.asarray(image.crop((left, y1, right, y2)).convert("L"), dtype=np.float32)
    in_box = grey[:, x1 - left:x2 - left]
    low, high = np.percentile(in_box, 5), np.percentile(in_box, 95)
    if high - low < 40:
        return None
    middle = (low + high) / 2
    # letters are thin strokes on their ground, so the ink is the lesser side: dark on light, or light on dark
    ink = ((grey < middle) if (in_box < middle).mean() <= 0.5 else (grey > middle)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    rows, cols = ink.shape
    pieces = [k for k in range(1, count) if stats[k, 2] <= 0.5 * (x2 - x1) and stats[k, 3] <= 0.9 * rows
              and stats[k, 0] > 0 and stats[k, 1] > 0 and stats[k, 0] + stats[k, 2] < cols
              and stats[k, 1] + stats[k, 3] < rows]
    inside = [k for k in pieces if left + stats[k, 0] < x2 and left + stats[k, 0] + stats[k, 2] > x1]
    if not inside:
        return None
    ink_height = float(stats[inside, 3].max())
    letters = [k for k in inside if stats[k, 3] >= 0.3 * ink_height or stats[k, 4] >= 0.1 * ink_height ** 2]
    filled_columns = np.isin(labels, letters).any(axis=0)
    columns = np.flatnonzero(filled_columns)
    if len(columns) < 2:
        return None
    filled = filled_columns[columns[0]:columns[-1] + 1]
    edges = np.flatnonzero(np.diff(filled.astype(np.int8))) + 1  # where ink and blank columns alternate
    widths = [len(run) for run in np.split(filled, edges)]  # ink, blank, ink, ..., ink
    if (len(widths) - 1) / 2 < (columns[-1] - columns[0]) / ink_height / 2:
        return None
    if _goes_on(stats, [k for k in pieces if k not in inside], letters, max(widths[1::2], default=0), ink_height):
        return None
    gaps, at = [], left + columns[0]
    for k, width in enumerate(widths):
        if k % 2 and width >= WORD_GAP * ink_height:
            gaps.append(Gap(at + width / 2, min(widths[k - 1], widths[k + 1]) >= NARROW * ink_height))
        at += width
    return gaps


def _goes_on(stats: np.ndarray, outside: list[int], letters: list[int], widest_blank: int, ink_height: float) -> bool:
    """Whether a letter-sized piece of ink past the box continues the line (OCR boxed only part of it: every
    reading of a seed-77 scene said "Z3" for "ZONE Z3", of a street one "OLD TOWN" for "OLD TOWN Z5"): as tall
    as 0.6 of the letters, level with the line's letter at that end, and no farther from it than the line's
    own word spacing allows (1.5 times its widest blank run, at least ONE_WORD_GAP ink heights: a sign whose box holds
    one word shows no word gap of its own)."""
    reach = max(1.5 * widest_blank, ONE_WORD_GAP * ink_height)
    first = min(letters, key=lambda k: stats[k, 0])
    last = max(letters, key=lambda k: stats[k, 0] + stats[k, 2])
    for k in outside:
        if stats[k, 3] < 0.6 * ink_height:
            continue
        end = last if stats[k, 0] > stats[last, 0] else first
        distance = max(stats[k, 0] - stats[end, 0] - stats[end, 2], stats[end, 0] - stats[k, 0] - stats[k, 2])
        level = abs((stats[k, 1] + stats[k, 3] / 2) - (stats[end, 1] + stats[end, 3] / 2)) <= 0.25 * ink_height
        if level and distance <= reach:
            return True
    return False


def placed(reading: TextHit | None, gaps: list[Gap]) -> str | None:
    """The reading's letters with a space at each gap, placed by where the reading says its letters are;
    None when the reading has no letter positions or a gap falls before the first, after the last letter or
    where another gap already is."""
    letters = [(letter, x) for letter, x in (reading.letters if reading else ()) if letter.strip()]
    cuts = sorted(sum(x < gap.x for _, x in letters) for gap in gaps)
    if not letters or len(set(cuts)) < len(cuts) or not all(0 < cut < len(letters) for cut in cuts):
        return None
    text = "".join(letter for letter, _ in letters)
    return " ".join(text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)]))


def spelled(text: str | None) -> str:
    """A reading as compared for agreement: exact, up to runs of white space."""
    return " ".join((text or "").split())


def proposed(text_a: str, text_b: str, first: TextHit | None, second: TextHit | None, seen: list[Gap]) -> str | None:
    """RapidOCR's spelling of a line whose rereads have the same letters: the rereads' spelling when both spell
    it alike with as many spaces as the pixels show (and, when every gap is certain, in the places below);
    else, when every gap is certain, the letters with a space at each gap, placed between the letters that
    each reread locates on either side of it, when both place them alike; else None (spaces left open)."""
    certain = all(gap.certain for gap in seen)
    if (text_a == text_b and sum(gap.certain for gap in seen) <= text_a.count(" ") <= len(seen)
            and (placed(first, seen) if certain else None) in (None, text_a)):
        return text_a
    if certain and (spaced := placed(first, seen)) and spaced == placed(second, seen):
        return spaced
    return None


def _cuts(text: str) -> set[int]:
    """Where a spelling puts its spaces: the number of letters (non-space characters) before each."""
    cuts, seen = set(), 0
    for char in text:
        if char == " ":
            cuts.add(seen)
        else:
            seen += 1
    return cuts - {0, seen}


def _gap_cuts(readings: list[TextHit | None], gaps: list[Gap], letters: str) -> tuple[set[int], set[int]] | None:
    """Where the pixels' word gaps fall between `letters`, as the rereads that locate them place them: the
    certain gaps' places, and those of all gaps; None when no reread locates those letters."""
    certain, possible = set(), set()
    located_by = [[(c, x) for c, x in (reading.letters if reading else ()) if c.strip()] for reading in readings]
    located_by = [located for located in located_by if "".join(c for c, _ in located) == letters]
    if not located_by:
        return None
    for located in located_by:
        for gap in gaps:
            cut = sum(x < gap.x for _, x in located)
            possible.add(cut)
            if gap.certain:
                certain.add(cut)
    inner = set(range(1, len(letters)))
    return certain & inner, possible & inner


def reconcile(proposal: str | None, second: str, engine_readings: list[str],
              gap_cuts: tuple[set[int], set[int]]) -> str | None:
    """The answer from RapidOCR's spelling `proposal` (None when its readings left the spaces open: then each
    space that one of its readings or a certain pixel gap puts) and the second reader's spelling `second`,
    which has the same letters and digits; None when a space stays in doubt. `engine_readings`: RapidOCR's
    whole-image reading (its detector's own word boxes) and its two rereads; `gap_cuts`: the certain and
    the possible word gaps of the pixels (`_gap_cuts`). Each place where one of the two puts a space:

    - both put one: a space;
    - only the second reader: a space when the pixels show a word gap there or a RapidOCR reading has one;
    - only RapidOCR: no space when it parts two pieces of letters only that the whole-image reading also
      reads as one word ("MU SEUM" / "MUSEUM": both engines read one word), or when it splits off a single
      letter that the second reader joins to its word ("NO PARKIN G" / "NO PARKING"); otherwise the space is
      in doubt ("EXIT 7" / "EXIT7", "BANK Z7" / "BANKZ7": a piece with a digit, a code, is a word of its own).
    """
    letters = second.replace(" ", "")
    engine = set().union(*(_cuts(text) for text in engine_readings))
    certain, possible = gap_cuts
    first = _cuts(proposal) if proposal is not None else engine | certain
    theirs, whole = _cuts(second), _cuts(engine_readings[0])
    ends = sorted({0, len(letters)} | first)
    kept = set()
    for cut in sorted(first | theirs):
        if cut in theirs:
            if cut not in first and cut not in possible | engine:
                return None
            kept.add(cut)
            continue
        before, after = ends[ends.index(cut) - 1], ends[ends.index(cut) + 1]
        inside_word = letters[before:cut].isalpha() and letters[cut:after].isalpha() and cut not in whole
        fragment = (after - cut == 1 and letters[cut].isalpha()) or (cut - before == 1 and letters[before].isalpha())
        if not (inside_word or fragment):
            return None
    return " ".join(letters[a:b] for a, b in zip([0, *sorted(kept)], [*sorted(kept), len(letters)]))


def _piece_of(hit: TextHit, line: TextHit) -> bool:
    """Whether `hit` is a piece of `line` read again (a tile's box of one of its letters or words: "M" over
    "MUSEUM", "C" over "CITY HALL K4"): most of its box in the line's, its reading part of the line's. Such a
    piece is no other text in the line's grid cell."""
    (a1, b1, a2, b2), (c1, d1, c2, d2) = hit.box, line.box
    shared = max(0, min(a2, c2) - max(a1, c1)) * max(0, min(b2, d2) - max(b1, d1))
    return (shared >= 0.8 * (a2 - a1) * (b2 - b1) and (c2 - c1) * (d2 - d1) > (a2 - a1) * (b2 - b1)
            and normalize_text(hit.text) in normalize_text(line.text))


def _without_marks(reading: TextHit | None, whole: str) -> TextHit | None:
    """A reread less the marks that are neither letters, digits nor spaces, when the whole-image reading has
    none: a wide gap in a spaced-out word may be read as one ("FIR: ST AID" for "FIRST AID")."""
    if reading is None or any(not (c.isalnum() or c.isspace()) for c in whole):
        return reading
    text = "".join(c for c in reading.text if c.isalnum() or c.isspace())
    return TextHit(reading.box, text, reading.score, tuple((c, x) for c, x in reading.letters if c.isalnum()))


def synthesize_text_tasks(
    hits: list[TextHit],
    truth_size: tuple[int, int],
    original_size: tuple[int, int],
    image: str,
    image_sha256: str,
    prompts: Prompts,
    config: TextTasksConfig,
    read_again: ReadAgain,
    gaps: Callable[[TextHit], list[Gap] | None],
    read_second: Callable[[TextHit], list[str]],
) -> tuple[list[Task], list[RejectedTask]]:
    """Tasks for one image from all text read at `truth_size`, and the candidates dropped because their
    readings disagree; ground truth boxes in original pixels. `read_again(hit, line_height, unclip)` reads
    the hit's line from its own tight crop (OcrEngine.reread), `gaps(hit)` counts its word gaps (`word_gaps`),
    `read_second(hit)` are the second reader's spellings of the line (OcrEngine.read_line: the first with
    RapidOCR's letters is compared), all on the image at truth size."""
    tasks: list[Task] = []
    rejected: list[RejectedTask] = []
    sx, sy = original_size[0] / truth_size[0], original_size[1] / truth_size[1]
    for hit, reading, position in _candidates(hits, truth_size, config):
        if len(tasks) >= config.max_per_image:
            break
        question = prompts.render("question_text", position=position)
        box = scale_box(hit.box, sx, sy)
        answer, reason = _answer(hit, reading, read_again, gaps, read_second)
        if reason:
            rejected.append(RejectedTask(object=hit.text, box=box, question=question, reason=reason))
            continue
        tasks.append(Task(
            id=task_id(image_sha256, question), image=image, image_sha256=image_sha256, question=question,
            answer=answer, gt_boxes=[box], source="ocr-synthesis", question_type="text", position=position,
        ))
    return tasks, rejected


def _candidates(hits: list[TextHit], size: tuple[int, int],
                config: TextTasksConfig) -> Iterator[tuple[TextHit, str, str]]:
    """The texts a question can name without giving them away, with their normalised reading and position:
    read confidently, small, of a length the config allows, alone in their grid cell and read nowhere else."""
    width, height = size
    hits = [hit for hit in hits if normalize_text(hit.text)]  # stray marks read as symbols name nothing
    hits = [hit for hit in hits if not any(_piece_of(hit, line) for line in hits if line is not hit)]
    occupancy: dict[tuple[int, int], int] = {}
    for hit in hits:
        cell = cell_of(hit.box, width, height)
        occupancy[cell] = occupancy.get(cell, 0) + 1
    readings = [normalize_text(hit.text) for hit in hits]
    for hit, reading in zip(hits, readings):
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
        yield hit, reading, position_name(cell)


def _answer(hit: TextHit, reading: str, read_again: ReadAgain, gaps: Callable[[TextHit], list[Gap] | None],
            read_second: Callable[[TextHit], list[str]]) -> tuple[str | None, str | None]:
    """The line's ground truth, or why it is dropped: RapidOCR's two rereads, the pixels' word gaps and the
    second reader must agree on its letters and its spaces (the module's docstring)."""
    (height_a, unclip_a), (height_b, unclip_b) = READINGS
    first, second = read_again(hit, height_a, unclip_a), read_again(hit, height_b, unclip_b)
    # the rereads with the whole-image reading's letters (the whole-image reading drops spaces, but its
    # letters count); with one only, RapidOCR leaves the spaces to the two-reader rule
    first, second = (_without_marks(r, hit.text) for r in (first, second))
    text_a, text_b = spelled(first and first.text), spelled(second and second.text)
    rereads = [r for r in (first, second) if r and normalize_text(r.text) == reading]
    if not rereads:
        return None, (f"readings disagree: {text_a!r} (line {height_a} px tall) vs {text_b!r} ({height_b} px) "
                      f"vs {hit.text!r} (whole image)")
    if (seen := gaps(hit)) is None:
        return None, (f"pixels unclear: the letters of {spelled(rereads[0].text)!r} cannot be told apart in its "
                      "pixels, or the line goes on past its box")
    own = spelled(rereads[0].text)
    proposal = proposed(text_a, text_b, first, second, seen) if len(rereads) == 2 else None
    others = [spelled(text) for text in read_second(hit)]
    # a reading that spells it as RapidOCR does, else the first with its letters and digits (case included)
    other = next((text for text in others if text == proposal),
                 next((text for text in others if text.replace(" ", "") == own.replace(" ", "")),
                      others[0] if others else ""))
    certain = sum(gap.certain for gap in seen)
    shown = str(len(seen)) if certain == len(seen) else f"{certain} to {len(seen)}"
    if other.replace(" ", "") != own.replace(" ", ""):
        return None, f"readers disagree: {proposal or own!r} (RapidOCR) vs {other!r} (Tesseract)"
    if proposal == other:
        return proposal, None
    if ((cuts := _gap_cuts(rereads, seen, other.replace(" ", ""))) is None and certain
            or (answer := reconcile(proposal, other, [spelled(hit.text), *(spelled(r.text) for r in rereads)],
                                    cuts or (set(), set()))) is None):
        return None, (f"spaces disagree: {proposal or own!r} (RapidOCR) vs {other!r} (Tesseract), "
                      f"its pixels {shown} word gap(s)")
    return answer, None


class OcrTextQuestions:
    """A `TaskMaker` (tasks.kind ocr): the text questions of a bare image, read by the worker's OCR engine at
    truth size, with their ground truth."""

    def __init__(self, config: PipelineConfig, engine: Callable[[], OcrEngine]):
        self.images = config.images
        self.tasks = config.tasks
        self.prompts = task_prompts(config)
        self.engine = engine

    @classmethod
    def build(cls, config: PipelineConfig, prompts: Prompts, engine: Callable[[], OcrEngine], agent: SearchAgent,
              on_loop: OnLoop) -> OcrTextQuestions:
        return cls(config, engine)

    def make(self, unit: ImageUnit, sha256: str, size: tuple[int, int]) -> tuple[ImageTasks, list[ErrorRecord]]:
        image, engine = truth_image(unit, size, self.images), self.engine()
        tasks, rejected = synthesize_text_tasks(
            engine.read(image), image.size, size, unit.rel, sha256, self.prompts, self.tasks,
            lambda hit, line_height, unclip: engine.reread(image, hit.box, line_height, unclip),
            lambda hit: word_gaps(image, hit.box), lambda hit: engine.read_line(image, hit.box))
        return image_tasks(unit.rel, sha256, size, tasks=tasks, rejected=rejected), []

    def close(self) -> None:
        pass
