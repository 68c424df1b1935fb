"""Task synthesis with the model roles, for bare image folders (`tasks.kind: vlm`).

Per image:
1. propose small objects: `models.detector` when one is configured (looking for
   `tasks.synthesis.detector_phrases`), else the task writer VLM; the image is shown in tiles x tiles
   parts, so that small objects are visible to the proposer at all;
2. describe each object's tight crop (the task writer);
3. write a question with ground truth from that description: attribute, position, text or counting;
   multiple choice with plausible distractors, shuffled by a fixed seed (the writer tends to put the
   correct option first);
4. check it with the reader the search uses, in the frame at the largest R: the reader must answer it
   correctly from the crop of the object (answerable), and must NOT answer it correctly from the whole
   frame (a question the whole frame answers is trivial: no zoom chain can come of it);
5. optionally (`verify`): answerable by agreement instead of one answer: `consistency.samples` answers of the
   reader on the crop at a temperature, as many of `models.second_reader`, the majority kept only at or above
   `min_agreement` (the agreement is stored in the task); and not too easy: `models.small_reader` must not
   answer it from the whole frame in `difficulty.too_easy` of `difficulty.tries` tries (the counts are stored).

Every dropped proposal is kept with its reason (`ImageTasks.rejected`) and every model call with its
tokens and cost (`ImageTasks.calls`). Ground-truth boxes are in original-image pixels.

    writer = TaskWriter(writer_model, reader_model, None, task_prompts(config), agent_prompts, config)
    result = await writer.synthesize(image, frame, (W, H), "street/a.jpg", sha256)

A worker runs it as its `TaskMaker` (`VlmTaskWriter`), on its event loop, with the VLM agent's models.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from PIL import Image
from pydantic import BaseModel, Field, model_validator

from mmcof_gen.answers import as_option, normalize_text, verify_answer
from mmcof_gen.cof_format import question_text
from mmcof_gen.config import PipelineConfig, QuestionType
from mmcof_gen.conventions import CONVENTIONS, DEFAULT, read_box
from mmcof_gen.imaging import (InvalidBox, box_area, clip_box, crop_zoom, frame_from_image, iou, make_frame,
                               scale_box)
from mmcof_gen.models.chat import (ChatMessage, ChatModel, ReplyError, ServerLimitError, about_images, chat_model,
                                   complete_json)
from mmcof_gen.models.detector import Detector
from mmcof_gen.models.replies import BoxValues, Phrase, ReaderReply
from mmcof_gen.positions import cell_of, position_name
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Box, ErrorRecord, ImageTasks, ModelCall, RejectedTask, Task, short_hash, task_id
from mmcof_gen.tasks.base import OnLoop, TasksFailed, image_tasks, task_prompts, truth_image
from mmcof_gen.tasks.sources import ImageUnit

if TYPE_CHECKING:
    from mmcof_gen.agent.vlm_search import VlmSearchAgent

SOURCE = "vlm-synthesis"

# ------------------------------------------------------------------------------------------ replies


class ProposedObject(BaseModel):  # bounded like every reply schema (models/replies.py)
    name: str = Field(min_length=1, max_length=80)
    box: BoxValues


class Proposals(BaseModel):
    objects: list[ProposedObject] = Field(max_length=20)


class CropDescription(BaseModel):
    description: str = Field(min_length=1, max_length=200)
    clear: bool


class WrittenQuestion(BaseModel):
    question_type: QuestionType
    question: str = Field(min_length=1, max_length=160)
    options: list[Annotated[str, Field(max_length=32)]] | None = Field(None, min_length=2, max_length=6)
    answer: Phrase = Field(min_length=1)

    @model_validator(mode="after")
    def _answer_is_an_option(self) -> WrittenQuestion:
        if self.options is None:
            if self.question_type != "text":
                raise ValueError(f"{self.question_type} questions need options")
            return self
        keys = [normalize_text(option) for option in self.options]
        if "" in keys or len(set(keys)) != len(keys):
            raise ValueError("options must be distinct and not empty")
        if normalize_text(self.answer) not in keys:
            raise ValueError("the answer must be one of the options")
        self.answer = self.options[keys.index(normalize_text(self.answer))]
        return self


# ------------------------------------------------------------------------------------------ synthesis


@dataclass
class SynthesizedTasks:
    tasks: list[Task] = field(default_factory=list)
    rejected: list[RejectedTask] = field(default_factory=list)
    calls: list[ModelCall] = field(default_factory=list)


@dataclass
class Candidate:
    """A proposed object that passed the geometric checks; `box` in pixels of the image shown to the writer."""

    name: str
    box: Box
    position: str = ""


class Rejected(Exception):
    """A candidate is dropped; the message says why."""


class TaskWriter:
    """Writes and checks the tasks of one image; the models are the worker's (one set per worker)."""

    def __init__(self, writer: ChatModel, reader: ChatModel, detector: Detector | None, prompts: Prompts,
                 reader_prompts: Prompts, config: PipelineConfig, second_reader: ChatModel | None = None,
                 small_reader: ChatModel | None = None):
        self.writer = writer
        self.reader = reader
        self.second_reader = second_reader
        self.small_reader = small_reader
        self.verify = config.verify
        self.detector = detector
        self.prompts = prompts
        self.reader_prompts = reader_prompts
        self.tasks = config.tasks
        self.settings = config.tasks.synthesis
        self.resolution = max(config.resolutions)
        self.reply_tokens = config.agent.reply_tokens
        writer_config = config.models.task_writer or config.models.planner
        self.writer_boxes = writer_config.box_convention if writer_config else CONVENTIONS[DEFAULT]

    async def synthesize(self, image: Image.Image, frame: Image.Image, original_size: tuple[int, int], rel: str,
                         sha256: str) -> SynthesizedTasks:
        """Tasks from `image` (the image at truth size), checked in `frame` (the working frame at the largest R).

        Raises ChatError when a model cannot be reached (the image becomes an error record and is retried on
        resume); a malformed reply only drops the proposal it was for.
        """
        out = SynthesizedTasks()
        to_original = original_size[0] / image.width, original_size[1] / image.height
        candidates = self._screen(await self._propose(image, out), image.size, to_original, out)
        try:
            async with asyncio.TaskGroup() as group:
                jobs = [group.create_task(self._write(image, frame, c, to_original, original_size, rel, sha256))
                        for c in candidates]
        except ExceptionGroup as errors:
            raise errors.exceptions[0] from None
        for candidate, job in zip(candidates, jobs):
            outcome, calls = job.result()
            out.calls += calls
            box = scale_box(candidate.box, *to_original)
            if isinstance(outcome, str):
                out.rejected.append(RejectedTask(object=candidate.name, box=box, reason=outcome))
            elif any(task.id == outcome.id for task in out.tasks):
                out.rejected.append(RejectedTask(object=candidate.name, box=box, question=outcome.question,
                                                 reason="the same question as an earlier task"))
            elif len(out.tasks) >= self.tasks.max_per_image:
                out.rejected.append(RejectedTask(object=candidate.name, box=box, question=outcome.question,
                                                 reason=f"tasks.max_per_image ({self.tasks.max_per_image}) reached"))
            else:
                out.tasks.append(outcome)
        return out

    # ------------------------------------------------------------------ 1. proposals

    async def _propose(self, image: Image.Image, out: SynthesizedTasks) -> list[Candidate]:
        """Objects in image pixels, tile by tile in reading order."""
        tiles = tile_boxes(image.width, image.height, self.settings.tiles)
        shown = [frame_from_image(image.crop(tile), self.settings.proposal_resolution) for tile in tiles]
        if self.detector is not None:
            requests = [(view, self.settings.detector_phrases) for view in shown]
            found = await asyncio.to_thread(self.detector.detect, requests)
            per_tile = [[(d.label, list(d.box)) for d in detections] for detections in found]
        else:
            per_tile = []
            for view in shown:
                prompt = self.prompts.render("propose", width=view.width, height=view.height,
                                             boxes=self.writer_boxes.describe(view.width, view.height),
                                             max_objects=self.settings.max_proposals)
                try:
                    reply = await self._ask(self.writer, "task_writer", [ChatMessage("user", prompt, [view])], Proposals,
                                            out.calls)
                except Rejected as exc:
                    out.rejected.append(RejectedTask(object="(proposals)", reason=str(exc)))
                    reply = Proposals(objects=[])
                per_tile.append([(o.name.strip(), o.box) for o in reply.objects])
        candidates = []
        boxes = CONVENTIONS[DEFAULT] if self.detector is not None else self.writer_boxes
        for tile, view, objects in zip(tiles, shown, per_tile):
            tile_scale = (tile[2] - tile[0]) / view.width, (tile[3] - tile[1]) / view.height
            for name, values in objects:
                try:
                    x1, y1, x2, y2 = scale_box(read_box(values, boxes, view.width, view.height), *tile_scale)
                    box = clip_box((x1 + tile[0], y1 + tile[1], x2 + tile[0], y2 + tile[1]), image.width, image.height)
                except InvalidBox as exc:
                    out.rejected.append(RejectedTask(object=name, reason=f"proposer: {exc}"))
                    continue
                candidates.append(Candidate(name, box))
        return candidates

    def _screen(self, proposals: list[Candidate], size: tuple[int, int], to_original: tuple[float, float],
                out: SynthesizedTasks) -> list[Candidate]:
        """Small, nameable by position, not a second copy of an object, at most `max_proposals`."""
        width, height = size
        kept: list[Candidate] = []
        for proposal in proposals:
            share = box_area(proposal.box) / (width * height)
            cell = cell_of(proposal.box, width, height, self.tasks.cell_margin)
            position = position_name(cell) if cell else ""
            same = next((k for k in kept if iou(k.box, proposal.box) > 0.5), None)
            twin = next((k for k in kept if k.position == position and normalize_text(k.name) == normalize_text(proposal.name)), None)
            if share > self.tasks.max_area_fraction:
                reason = f"not small: {share:.1%} of the image (tasks.max_area_fraction {self.tasks.max_area_fraction:g})"
            elif cell is None:
                reason = "its centre is near a line of the 3x3 grid, so its position cannot be named"
            elif same is not None:
                reason = f"the same object as {same.name!r} {list(scale_box(same.box, *to_original))}"
            elif twin is not None:
                reason = f"another {proposal.name!r} in the {position} part: a question could not single it out"
            elif len(kept) >= self.settings.max_proposals:
                reason = f"tasks.synthesis.max_proposals ({self.settings.max_proposals}) reached"
            else:
                proposal.position = position
                kept.append(proposal)
                continue
            out.rejected.append(RejectedTask(object=proposal.name, box=scale_box(proposal.box, *to_original),
                                             reason=reason))
        return kept

    # ------------------------------------------------------------------ 2-4. describe, write, check

    async def _write(self, image: Image.Image, frame: Image.Image, candidate: Candidate,
                     to_original: tuple[float, float], original_size: tuple[int, int], rel: str,
                     sha256: str) -> tuple[Task | str, list[ModelCall]]:
        """The candidate's task, or why it was dropped; and the model calls it took."""
        calls: list[ModelCall] = []
        box = scale_box(candidate.box, *to_original)
        try:
            crop = crop_zoom(image, candidate.box)
            prompt = self.prompts.render("describe", object=candidate.name)
            seen = await self._ask(self.writer, "task_writer", [ChatMessage("user", prompt, [crop])], CropDescription,
                                   calls)
            if not seen.clear:
                raise Rejected(f"the crop does not clearly show a {candidate.name}: {seen.description}")
            prompt = self.prompts.render(
                "write_question", object=candidate.name, position=candidate.position, description=seen.description,
                question_types=", ".join(self.settings.question_types), num_options=self.settings.num_options)
            written = await self._ask(self.writer, "task_writer", [ChatMessage("user", prompt, [crop])], WrittenQuestion,
                                      calls)
            if written.question_type not in self.settings.question_types:
                raise Rejected(f"the writer asked a {written.question_type} question, not one of "
                               f"tasks.synthesis.question_types")
            options = list(written.options) if written.options else None
            if options:
                random.Random(short_hash(rel, written.question)).shuffle(options)
            frame_box = clip_box(scale_box(box, frame.width / original_size[0], frame.height / original_size[1]),
                                 frame.width, frame.height)
            where = f"at R={self.resolution}"
            tight = crop_zoom(frame, frame_box)
            agreement = easy = None
            if self.verify.consistency is None:
                answer, correct = await self._check(self.reader, "task_reader", tight, written, options, calls)
                if not correct:
                    raise Rejected(f"not answerable on the crop {where}: the reader answered {answer!r}, "
                                   f"expected {written.answer!r}")
            else:
                agreement = await self._agreement(tight, written, options, calls, where)
            answer, correct = await self._check(self.reader, "task_reader", frame, written, options, calls)
            if correct:
                raise Rejected(f"trivial: the reader answers it from the whole frame {where} without a zoom "
                               f"({answer!r})")
            if self.verify.difficulty is not None:
                easy = await self._difficulty(frame, written, options, calls, where)
        except (Rejected, InvalidBox) as exc:
            return str(exc), calls
        return Task(id=task_id(sha256, written.question), image=rel, image_sha256=sha256, question=written.question,
                    options=options, answer=written.answer, gt_boxes=[box], source=SOURCE,
                    question_type=written.question_type, position=candidate.position, agreement=agreement,
                    easy_tries=easy), calls

    async def _agreement(self, tight: Image.Image, written: WrittenQuestion, options: list[str] | None,
                         calls: list[ModelCall], where: str) -> float:
        """The share of the readers' answers on the crop that give the written answer (verify.consistency);
        Rejected when their majority is below min_agreement or is another answer."""
        settings = self.verify.consistency
        readers = [(self.reader, "task_reader")] + ([(self.second_reader, "second_reader")] if self.second_reader else [])
        own: list[list[ModelCall]] = [[] for _ in range(settings.samples * len(readers))]
        jobs = [self._check(model, role, tight, written, options, own[i * settings.samples + k], settings.temperature)
                for i, (model, role) in enumerate(readers) for k in range(settings.samples)]
        answers = [answer for answer, _ in await asyncio.gather(*jobs)]
        calls += [call for job_calls in own for call in job_calls]
        key, count = Counter(normalize_text(a or "") for a in answers).most_common(1)[0]
        majority = next(a for a in answers if normalize_text(a or "") == key)
        agreement = round(count / len(answers), 4)
        if agreement < settings.min_agreement:
            raise Rejected(f"readings disagree: {majority!r} is {count} of {len(answers)} answers on the crop {where} "
                           f"(agreement {agreement:.2f} < verify.consistency.min_agreement {settings.min_agreement:g})")
        if not verify_answer(majority, written.answer).correct:
            raise Rejected(f"not answerable on the crop {where}: the readers' majority answer is {majority!r} "
                           f"({count} of {len(answers)}), expected {written.answer!r}")
        return agreement

    async def _difficulty(self, frame: Image.Image, written: WrittenQuestion, options: list[str] | None,
                          calls: list[ModelCall], where: str) -> tuple[int, int]:
        """(correct, tries) of the small model on the whole frame (verify.difficulty); Rejected when too easy."""
        settings = self.verify.difficulty
        own: list[list[ModelCall]] = [[] for _ in range(settings.tries)]
        results = await asyncio.gather(*(self._check(self.small_reader, "small_reader", frame, written, options,
                                                     own[k], settings.temperature) for k in range(settings.tries)))
        calls += [call for job_calls in own for call in job_calls]
        correct = sum(ok for _, ok in results)
        if correct >= settings.too_easy:
            raise Rejected(f"too easy: the small model answers it from the whole frame {where} in {correct} of "
                           f"{settings.tries} tries (verify.difficulty.too_easy {settings.too_easy})")
        return correct, settings.tries

    async def _check(self, model: ChatModel, role: str, view: Image.Image, written: WrittenQuestion,
                     options: list[str] | None, calls: list[ModelCall], temperature: float = 0.0
                     ) -> tuple[str | None, bool]:
        """A reader's answer from `view` (as option text) and whether it is right; asked as the search's reader asks,
        so that the check on the frame shares its prefix with the searches on that frame."""
        prompt = self.reader_prompts.render("reader", question_text=question_text(written.question, options))
        messages = about_images(self.reader_prompts.render("system"), [view], prompt)
        reply = await self._ask(model, role, messages, ReaderReply, calls, temperature)
        answer = as_option(reply.answer.strip(), options)
        return answer, verify_answer(answer, written.answer).correct

    async def _ask(self, model: ChatModel, role: str, messages: list[ChatMessage], schema: type[BaseModel],
                   calls: list[ModelCall], temperature: float = 0.0) -> BaseModel:
        try:
            reply, completions = await complete_json(model, messages, schema, max_tokens=self.reply_tokens,
                                                     temperature=temperature)
        except ReplyError as exc:
            calls += [c.as_call(role) for c in exc.completions]
            raise Rejected(f"{role}: {exc}") from None
        calls += [c.as_call(role) for c in completions]
        return reply


def tile_boxes(width: int, height: int, tiles: int) -> list[Box]:
    """The image cut into tiles x tiles parts, row by row."""
    return [(col * width // tiles, row * height // tiles, (col + 1) * width // tiles, (row + 1) * height // tiles)
            for row in range(tiles) for col in range(tiles)]


class VlmTaskWriter:
    """A `TaskMaker` (tasks.kind vlm, which config validation allows with agent.kind vlm only): a `TaskWriter` with
    the searching agent's models, so that the check on a frame shares its prefix and its clients with the searches
    on it. The search's reader checks and its detector proposes; the writer is models.task_writer, else the planner."""

    def __init__(self, writer: TaskWriter, config: PipelineConfig, on_loop: OnLoop):
        self.writer = writer
        self.images = config.images
        self.resolution = max(config.resolutions)
        self.on_loop = on_loop

    @classmethod
    def build(cls, config: PipelineConfig, prompts: Prompts, engine, agent: VlmSearchAgent,
              on_loop: OnLoop) -> VlmTaskWriter:
        roles, models = agent.roles, config.models
        writer = chat_model(models.task_writer) if models.task_writer else roles.planner
        second, small = (chat_model(m) if m else None for m in (models.second_reader, models.small_reader))
        return cls(TaskWriter(writer, roles.reader, roles.detector, task_prompts(config), prompts, config, second,
                              small), config, on_loop)

    def make(self, unit: ImageUnit, sha256: str, size: tuple[int, int]) -> tuple[ImageTasks, list[ErrorRecord]]:
        """TasksFailed when a model is out of reach: this image fails, the run goes on."""
        image = truth_image(unit, size, self.images)
        frame = make_frame(unit.path, self.resolution, self.images.max_pixels, size)
        try:
            made = self.on_loop(self.writer.synthesize(image, frame, size, unit.rel, sha256)).result()
        except ServerLimitError:  # every other image would hit it too: the run stops
            raise
        except Exception as exc:
            raise TasksFailed() from exc
        return image_tasks(unit.rel, sha256, size, tasks=made.tasks, rejected=made.rejected, calls=made.calls), []

    def close(self) -> None:
        """Its writer may be a model of its own, as may the second and the small readers (the planner, which the
        agent closes too, is closed twice: harmless)."""
        writer = self.writer
        for model in {writer.writer, writer.second_reader, writer.small_reader} - {None}:
            self.on_loop(model.aclose()).result()
