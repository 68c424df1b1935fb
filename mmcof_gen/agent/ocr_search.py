"""The offline search agent: RapidOCR locates and reads, templates write the thoughts.

At each resolution it first asks the reader about the whole frame; only when that answer is wrong
does it search: name what is missing, locate text in the region the question points to (zooming into
the region first when nothing is found there), zoom on each candidate in turn and read it, until the
verifier accepts an answer or the zoom budget is spent. Only the zooms that led to the answer are kept
in the chain, coarse to fine.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, ClassVar

from PIL import Image

from mmcof_gen.agent.base import SearchResult
from mmcof_gen.answers import verify_answer
from mmcof_gen.config import AgentConfig, PipelineConfig
from mmcof_gen.imaging import clip_box, crop_to_frame, crop_zoom, scale_box, zoom_region
from mmcof_gen.models.ocr import OcrEngine, TextHit, centre_in as _centre_in
from mmcof_gen.positions import cell_box, cell_named, cell_of, position_name
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Box, ChainStep, Detection, Step, Task, Verdict, View

if TYPE_CHECKING:
    from mmcof_gen.tasks.sources import GivenQuestion

OCR_MODEL = "rapidocr-onnxruntime/PP-OCRv4"


def _height(hit: TextHit) -> int:
    return hit.box[3] - hit.box[1]


def _detections(hits: list[TextHit]) -> list[Detection]:
    return [Detection(box=h.box, score=round(h.score, 4), label=h.text) for h in hits]


class OcrSearchAgent:
    """Locator and reader: one OCR engine. Planner and summariser: the templates in `prompts`. A `SearchAgent`
    (agent/base.py) that computes in this process: its searches run one at a time."""

    cpu_bound: ClassVar[bool] = True

    def __init__(self, engine: OcrEngine, prompts: Prompts, config: AgentConfig, min_read_height: int = 20):
        self.engine = engine
        self.prompts = prompts
        self.config = config
        self.min_read_height = min_read_height
        self._frame_read: tuple[Image.Image, list[TextHit]] | None = None  # the last frame read whole, its hits

    @classmethod
    def build(cls, config: PipelineConfig, prompts: Prompts, engine, shared_detector=None) -> OcrSearchAgent:
        """With the worker's OCR engine (`engine()`, built on first call) as locator and reader; no model server."""
        return cls(engine(), prompts, config.agent, config.ocr.min_read_height)

    @staticmethod
    def models(config: PipelineConfig) -> dict[str, str]:
        return {"planner": "template", "summariser": "template", "locator": OCR_MODEL, "reader": OCR_MODEL,
                "verifier": "rules"}

    @staticmethod
    def check_servers(config: PipelineConfig, wait_seconds: float = 0.0) -> dict[str, dict]:
        return {}  # no model server

    @staticmethod
    def detector(config: PipelineConfig) -> None:
        return None  # OCR locates

    @staticmethod
    def cannot_search(question: GivenQuestion) -> str | None:
        """It searches the grid cell the question names, or else the cell of its box (`search_region`)."""
        if question.position:
            try:
                cell_named(question.position)
            except ValueError as exc:
                return f"the OCR agent (agent.kind ocr) cannot search it: {exc}"
        elif not question.boxes:
            return ("the OCR agent (agent.kind ocr) needs a question with a position (e.g. \"top left\") or a bbox; "
                    "add one, or use a pipeline with agent.kind vlm")
        return None

    async def aclose(self) -> None:
        """Nothing to release: the engine belongs to the worker."""

    @staticmethod
    def search_region(task: Task, view: View) -> tuple[str, Box]:
        """What the question points to, in frame pixels: its grid cell, or else the cell of its
        ground-truth box (the verifier's hint, for given questions that name no position)."""
        if task.position:
            cell = cell_named(task.position)
        elif task.gt_boxes:
            sx, sy = view.scale
            cell = cell_of(clip_box(scale_box(task.gt_boxes[0], sx, sy), view.width, view.height),
                           view.width, view.height)
        else:
            raise ValueError("the OCR agent needs a question with a position or a ground-truth box")
        return position_name(cell), cell_box(cell, view.width, view.height)

    async def run(self, task: Task, frame: Image.Image, view: View) -> SearchResult:
        """One search. The whole frame is read once for all the tasks searched on it in a row (the worker
        passes one frame object per resolution), which saves a read per task.

        A verified answer is stated as the ground truth spells it (the full-resolution reading): the
        verifier ignores case, spaces and punctuation, but the sample should say what is written. Each
        thought states only what this search observed: the height of the text it located (frame pixels, or
        pixels of the zoomed view) against the reader's acuity (`min_read_height`), and where it was.
        """
        result = SearchResult()
        position, region = self.search_region(task, view)
        acuity = self.min_read_height

        if self._frame_read is None or self._frame_read[0] is not frame:
            self._frame_read = frame, self.engine.read(frame)
        hits = self._frame_read[1]
        result.steps.append(Step(action="read", arguments={"what": "read the whole frame"},
                                 detections=_detections(hits), observation=f"{len(hits)} text line(s)"))
        in_region = [h for h in hits if _centre_in(h.box, region)]
        best = self._best(in_region)
        verdict = verify_answer(best.text if best else None, task.answer)
        result.steps[-1].observation += f"; verifier: {verdict.reason}"
        if verdict.correct:
            result.steps.append(Step(action="answer", arguments={"text": task.answer}))
            result.final_thought = self.prompts.render("think_direct", position=position, answer=task.answer,
                                                       height=_height(best), acuity=acuity)
            result.answer, result.verdict, result.accepted = task.answer, verdict, True
            return result

        result.needs_zoom = True
        kept, zooms, shown, verdict = self._zoom_in(result, task, frame, position, region, in_region, verdict)

        if not verdict.correct:
            result.reason = f"no verified answer after {zooms} zoom(s): {verdict.reason}"
            result.verdict = verdict
            return result
        result.chain = kept
        result.answer, result.verdict, result.accepted = task.answer, verdict, True
        result.final_thought = self.prompts.render("think_answer", answer=task.answer, height=shown, acuity=acuity)
        result.steps.append(Step(action="answer", arguments={"text": task.answer}))
        return result

    def _zoom_in(self, result: SearchResult, task: Task, frame: Image.Image, position: str, region: Box,
                 in_region: list[TextHit], verdict: Verdict) -> tuple[list[ChainStep], int, int, Verdict]:
        """Zooms on the text lines too small to read in the question's region (the region itself when there are
        none) until a reading verifies or `max_zooms` are spent: the chain kept, the zooms made, the height the
        verified text was shown at, and the last verdict."""
        acuity = self.min_read_height
        target = f"the text in the {position} part of the image"
        candidates = [(hit, 1.0) for hit in self._too_small(in_region)]
        result.steps.append(Step(
            action="locate", arguments={"phrase": target}, box=region,
            thought=f"I cannot answer; these objects are missing or unclear: {target}.",
            observation=f"{len(candidates)} text candidate(s) too small to read in the region",
            detections=_detections([hit for hit, _ in candidates]),
        ))
        kept: list[ChainStep] = []
        zooms = 0
        shown = 0
        while zooms < self.config.max_zooms:
            if not candidates:
                if kept:
                    break  # the region was searched already and holds nothing more to zoom on
                if in_region:
                    thought = self.prompts.render("think_search_unclear", position=position,
                                                  height=_height(in_region[0]), acuity=acuity)
                else:
                    thought = self.prompts.render("think_search_region", position=position)
                zooms += 1
                found, scale = self._zoom_and_read(result, frame, region, "read the zoomed region")
                found = [h for h in found if _centre_in(h.box, region)]
                kept.append(ChainStep(thought=thought, box=region, label=target))
                best = self._best(found, scale)
                verdict = verify_answer(best.text if best else None, task.answer)
                result.steps[-1].observation += f"; verifier: {verdict.reason}"
                if verdict.correct:
                    shown = int(_height(best) * scale)  # floored: on the same side of the acuity as h * scale
                    break
                candidates = [(hit, scale) for hit in self._too_small(found, scale)]
                continue
            candidate, seen_at = candidates.pop(0)
            box = padded(candidate.box, frame.size, self.config.target_padding)
            zooms += 1
            found, scale = self._zoom_and_read(result, frame, box, "read the zoomed candidate")
            over = [h for h in found if _centre_in(h.box, box) or _centre_in(candidate.box, h.box)]
            best = self._best(over, scale)
            verdict = verify_answer(best.text if best else None, task.answer)
            result.steps[-1].observation += f"; verifier: {verdict.reason}"
            if verdict.correct:
                shown = int(_height(best) * scale)  # floored: on the same side of the acuity as h * scale
                if kept:
                    thought = self.prompts.render("think_refine_target", box=list(candidate.box), acuity=acuity,
                                                  height=int(_height(candidate) * seen_at))
                else:
                    thought = self.prompts.render("think_zoom_target", position=position, box=list(candidate.box),
                                                  height=_height(candidate), acuity=acuity)
                kept.append(ChainStep(thought=thought, box=box, label=target))
                break
        return kept, zooms, shown, verdict

    def _legible(self, hit: TextHit, crop_scale: float) -> bool:
        """Whether the reader can read this line: tall enough in the image it was shown (frame boxes
        times the crop's magnification)."""
        return _height(hit) * crop_scale >= self.min_read_height

    def _best(self, hits: list[TextHit], crop_scale: float = 1.0) -> TextHit | None:
        """The most confident legible line: what the reader says."""
        legible = [h for h in hits if self._legible(h, crop_scale)]
        return max(legible, key=lambda h: h.score) if legible else None

    def _too_small(self, hits: list[TextHit], crop_scale: float = 1.0) -> list[TextHit]:
        """Text that is there but too small to read: what the search zooms on, most confident first."""
        return sorted((h for h in hits if not self._legible(h, crop_scale)), key=lambda h: -h.score)

    def _zoom_and_read(self, result: SearchResult, frame: Image.Image, box: Box, what: str
                       ) -> tuple[list[TextHit], float]:
        """Zoom on `box` and read the crop: its hits in frame pixels, and the crop's magnification."""
        crop = self._zoom(result, frame, box)
        region = zoom_region(box, *frame.size)
        found = [TextHit(crop_to_frame(h.box, crop.size, region), h.text, h.score)
                 for h in self._read(result, crop, box, what)]
        return found, crop.width / (region[2] - region[0])

    def _read(self, result: SearchResult, image: Image.Image, box: Box | None, what: str) -> list[TextHit]:
        start = time.perf_counter()
        hits = self.engine.read(image)
        result.steps.append(Step(
            action="read", box=box, arguments={"what": what}, detections=_detections(hits),
            observation=f"{len(hits)} text line(s)", seconds=round(time.perf_counter() - start, 4),
        ))
        return hits

    def _zoom(self, result: SearchResult, frame: Image.Image, box: Box) -> Image.Image:
        start = time.perf_counter()
        crop = crop_zoom(frame, box)
        result.steps.append(Step(action="zoom", arguments={"bbox_2d": list(box)}, box=box,
                                 observation=f"crop {crop.width}x{crop.height}",
                                 seconds=round(time.perf_counter() - start, 4)))
        return crop


def padded(box: Box, frame_size: tuple[int, int], padding: float) -> Box:
    """A located text box grown by `padding` of its size on each side (at least 2 pixels): OCR boxes are tight and
    small text is often cut at low R."""
    pad_x = max(2, round((box[2] - box[0]) * padding))
    pad_y = max(2, round((box[3] - box[1]) * padding))
    return clip_box((box[0] - pad_x, box[1] - pad_y, box[2] + pad_x, box[3] + pad_y), *frame_size)
