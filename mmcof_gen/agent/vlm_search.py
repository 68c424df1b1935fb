"""The visual search agent with model roles (docs/architecture.md, "The VLM search agent"): planner, reader,
locator (a detector or a VLM's grounding), verifier (rules, optional LLM judge) and summariser (an LLM or templates).

At each resolution the reader first answers from the whole frame; a correct answer makes a direct
sample. Otherwise the planner names what is missing ("I cannot answer; these objects are missing or
unclear: ...") and searches with ReAct actions, one JSON reply per step:

    locate(phrase) -> candidate boxes     read(box | None) -> the reader's answer, checked by the verifier
    adjust(box, enlarge|shrink|shift)     zoom(box) -> the crop, shown to the planner      answer(text)

The search ends when a box the reader read is verified correct (that box is the evidence), or a budget
runs out. A planner without eyes (`vision: false`, a text-only LLM) plans the same actions from text alone: the
question, the frame size and every observation in words (`text_observation`); the reader, the locator and
the crop function do all the seeing, and the chain is made the same way whichever planner made it. The kept chain is the zooms around the evidence, coarse to fine, ending with the evidence box:
the last crop of the chain is exactly the crop the verified answer was read from. Every model call
is recorded in its step (tokens, seconds, retries, cost).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from mmcof_gen.agent.base import SearchResult, StopSearch
from mmcof_gen.agent.ocr_search import OcrSearchAgent
from mmcof_gen.agent.servers import check_servers
from mmcof_gen.agent.verify import box_hint
from mmcof_gen.answers import as_option, verify_answer
from mmcof_gen.cof_format import question_text
from mmcof_gen.config import AgentConfig, ModelsConfig, PipelineConfig
from mmcof_gen.conventions import CONVENTIONS, DEFAULT, BoxConvention, read_box, write_box
from mmcof_gen.imaging import box_area, clip_box, crop_zoom, overlap_area, scale_box
from mmcof_gen.models.chat import (ChatMessage, ChatModel, ChatModelConfig, Completion, ReplyError, about_images,
                                   chat_model, complete_json)
from mmcof_gen.models.detector import Detector, DetectorConfig
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.models.ocr import OcrReader, OcrReaderConfig
from mmcof_gen.models.replies import BoxValues, Phrase, ReaderReply, Thought
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Box, ChainStep, Detection, Step, Task, Verdict, View, named_object

if TYPE_CHECKING:
    from mmcof_gen.tasks.sources import GivenQuestion

# agent.planner_actions -> the search loop, as "module:function", that replaces the box-writing planner's (absent:
# "boxes", this module's). Named, not imported: the loop is written against this module's agent and Search.
ACTION_SPACES = {"choose": "mmcof_gen.agent.candidates:choose_search"}

# ------------------------------------------------------------------------------------------ replies
# Bounded like every reply schema (models/replies.py).


class Targets(BaseModel):
    missing: list[Phrase] = Field(min_length=1, max_length=4)


class PlannerAction(BaseModel):
    thought: Thought
    action: Literal["locate", "read", "adjust", "zoom", "answer"]
    phrase: Phrase | None = None
    box: BoxValues | None = None
    instruction: Literal["enlarge", "shrink", "shift"] | None = None
    direction: Literal["left", "right", "up", "down"] | None = None
    answer: Phrase | None = None

    @model_validator(mode="after")
    def _arguments(self) -> PlannerAction:
        needs = {"locate": ["phrase"], "adjust": ["box", "instruction"], "zoom": ["box"], "answer": ["answer"]}
        needed = needs.get(self.action, []) + (["direction"] if self.instruction == "shift" else [])
        missing = [name for name in needed if getattr(self, name) in (None, "")]
        if missing:
            raise ValueError(f"action {self.action} needs {', '.join(missing)}")
        return self


def _one_variant_per_action(schema: dict) -> None:
    """PlannerAction's schema as one object per action with exactly that action's arguments, all required: a
    server that decodes to the schema (a grammar) then cannot leave an argument out or add a stray one."""
    fields = {name: value["anyOf"][0] if "anyOf" in value else value for name, value in schema["properties"].items()}
    shift = dict(fields["instruction"], enum=["shift"])
    resize = dict(fields["instruction"], enum=["enlarge", "shrink"])
    variants = [("locate", {"phrase": fields["phrase"]}),
                ("read", {"box": {"anyOf": [fields["box"], {"type": "null"}]}}),
                ("adjust", {"box": fields["box"], "instruction": resize}),
                ("adjust", {"box": fields["box"], "instruction": shift, "direction": fields["direction"]}),
                ("zoom", {"box": fields["box"]}), ("answer", {"answer": fields["answer"]})]
    title = schema["title"]
    schema.clear()
    schema.update(title=title, anyOf=[
        {"type": "object", "properties": {"thought": fields["thought"], "action": {"const": action}, **arguments},
         "required": ["thought", "action", *arguments], "additionalProperties": False}
        for action, arguments in variants])


class TextPlannerAction(PlannerAction):
    """The text-only planner's action: the same reply, under a schema that names each action's arguments. A
    text-only planner is often a small LLM, for which the grammar is what keeps its plans complete."""

    model_config = ConfigDict(title="PlannerAction", json_schema_extra=_one_variant_per_action)


class LocateReply(BaseModel):
    boxes: list[BoxValues] = Field(max_length=5)


class JudgeReply(BaseModel):
    correct: bool
    reason: Thought


def summary_schema(count: int) -> type[BaseModel]:
    """The summariser's reply: exactly one thought per kept zoom, no format tags (those are ours to add)."""

    def no_tags(value):
        texts = value if isinstance(value, list) else [value]
        if any(tag in text for text in texts for tag in ("<think", "<tool_call", "<answer", "</")):
            raise ValueError("thoughts must not contain tags such as <think>, <tool_call> or <answer>")
        return value

    return create_model("Summary", thoughts=(list[Thought], Field(min_length=count, max_length=count)),
                        final_thought=(str, Field(min_length=1, max_length=200)),
                        __validators__={"no_tags": field_validator("thoughts", "final_thought")(no_tags)})


# ------------------------------------------------------------------------------------------ geometry


def adjust_box(box: Box, instruction: str, direction: str | None, width: int, height: int) -> Box:
    """enlarge/shrink by 1.5x about the centre, or shift by half the box; clipped to the frame."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    if instruction in ("enlarge", "shrink"):
        factor = 1.5 if instruction == "enlarge" else 1 / 1.5
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        w, h = max(2.0, w * factor), max(2.0, h * factor)
        return clip_box((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), width, height)
    dx, dy = {"left": (-w / 2, 0), "right": (w / 2, 0), "up": (0, -h / 2), "down": (0, h / 2)}[direction or "right"]
    return clip_box((x1 + dx, y1 + dy, x2 + dx, y2 + dy), width, height)


def chain_boxes(zooms: list[Box], evidence: Box) -> tuple[list[Box], list[Box]]:
    """(kept, detours): the zooms that hold the evidence, largest first, then the evidence box; the rest."""
    holding = [z for z in dict.fromkeys(zooms) if z != evidence and overlap_area(z, evidence) >= 0.9 * box_area(evidence)]
    kept = sorted(holding, key=box_area, reverse=True) + [evidence]
    return kept, [z for z in dict.fromkeys(zooms) if z not in kept]


def text_observation(step: Step, shown: Callable[[Box], list]) -> str:
    """What a planner without eyes is told of one step: the observation in words, naming the box it concerns as
    the planner writes boxes (`shown`: its convention); a zoom is told by its region's size in frame pixels
    instead of being shown."""
    if step.action == "zoom" and step.box is not None:
        x1, y1, x2, y2 = step.box
        return (f"zoomed into {shown(step.box)}, a region of {x2 - x1}x{y2 - y1} frame pixels; "
                "read a box to learn what it shows")
    if step.action == "read" and not step.observation.startswith("invalid box"):
        return f"read {shown(step.box) if step.box else 'the whole image'}: {step.observation}"
    return step.observation


# ------------------------------------------------------------------------------------------ roles


@dataclass
class Roles:
    """The models of one worker; one instance per distinct config, shared by the roles that name it."""

    planner: ChatModel
    reader: ChatModel | OcrReader
    locator: ChatModel | None = None
    detector: Detector | None = None
    judge: ChatModel | None = None
    summariser: ChatModel | None = None
    blind: frozenset[str] = frozenset()  # roles whose model is sent text only (vision: false)
    boxes: dict[str, str] = field(default_factory=dict)  # role -> box convention (conventions.py); none: pixels

    def convention(self, role: str) -> BoxConvention:
        """How `role` writes boxes and is told them: its replies are read, its prompts worded, in this."""
        return CONVENTIONS[self.boxes.get(role, DEFAULT)]

    @classmethod
    def build(cls, models: ModelsConfig, shared_detector: Detector | None = None) -> Roles:
        """The models of `models`; `shared_detector` (a proxy to detector actors) replaces building models.detector."""
        built: dict[str, ChatModel] = {}

        def make(config: ChatModelConfig | None) -> ChatModel | None:
            if config is None:
                return None
            key = config.model_dump_json()
            if key not in built:
                built[key] = chat_model(config)
            return built[key]

        planner = make(models.planner)
        reader = OcrReader(models.reader) if isinstance(models.reader, OcrReaderConfig) else make(models.reader)
        blind = frozenset(role for role in ("planner", "summariser")
                          if getattr(models, role) is not None and not getattr(models, role).vision)
        boxes = {role: config.box_convention.name for role, config in
                 (("planner", models.planner), ("locator", models.locator or models.planner)) if config is not None}
        return cls(planner=planner, reader=reader or planner,
                   locator=None if models.detector else (make(models.locator) or planner),
                   detector=shared_detector or (detector(models.detector) if models.detector else None),
                   judge=make(models.verifier), summariser=make(models.summariser), blind=blind, boxes=boxes)


def role_models(models: ModelsConfig) -> dict[str, str]:
    """Role -> model name, for the provenance of every record."""
    planner = models.planner.name if models.planner else "none"
    locator = models.detector.name if models.detector else (models.locator.name if models.locator else planner)
    return {"planner": planner, "reader": models.reader.name if models.reader else planner, "locator": locator,
            "verifier": "rules" + (f" + {models.verifier.name}" if models.verifier else ""),
            "summariser": models.summariser.name if models.summariser else "template"}


# ------------------------------------------------------------------------------------------ the search


class WallTimeSpent(TimeoutError):
    """A search out of its wall-time budget: on a loaded machine or server a later run may finish it, so it
    ends as a transient error (retried on resume), not as a rejected trajectory."""

    transient = True


@dataclass
class Search:
    """The state of one search at one resolution."""

    task: Task
    frame: Image.Image
    view: View
    target: Box | None  # the ground-truth box in frame pixels, when the task has one
    result: SearchResult = field(default_factory=SearchResult)
    tokens: int = 0
    zooms: list[Box] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    found: dict[Box, str] = field(default_factory=dict)  # located box -> phrase
    evidence: Box | None = None  # the box whose crop the verified answer was read from
    verified: tuple[str, Verdict] | None = None


class VlmSearchAgent:
    """One search per (task, view), async so that a worker runs the searches of an image concurrently. A
    `SearchAgent` (agent/base.py) that waits on model servers."""

    cpu_bound: ClassVar[bool] = False

    def __init__(self, roles: Roles, prompts: Prompts, config: AgentConfig):
        self.roles = roles
        self.prompts = prompts
        self.config = config
        self.detector_lock = threading.Lock()

    @classmethod
    def build(cls, config: PipelineConfig, prompts: Prompts, engine, shared_detector=None) -> VlmSearchAgent:
        """With the models of `config.models` (`shared_detector` stands in for models.detector); no OCR engine."""
        return cls(Roles.build(config.models, shared_detector), prompts, config.agent)

    @staticmethod
    def models(config: PipelineConfig) -> dict[str, str]:
        return role_models(config.models)

    @staticmethod
    def check_servers(config: PipelineConfig, wait_seconds: float = 0.0) -> dict[str, dict]:
        return check_servers(config, wait_seconds)

    @staticmethod
    def detector(config: PipelineConfig) -> DetectorConfig | None:
        return config.models.detector

    @staticmethod
    def cannot_search(question: GivenQuestion) -> None:
        return None  # the planner finds what a question asks about, with or without a box or position

    async def aclose(self) -> None:
        roles = self.roles
        for model in {roles.planner, roles.reader, roles.locator, roles.judge, roles.summariser} - {None}:
            await model.aclose()

    async def run(self, task: Task, frame: Image.Image, view: View) -> SearchResult:
        target = None
        if task.gt_boxes:
            target = clip_box(scale_box(task.gt_boxes[0], *view.scale), view.width, view.height)
        search = Search(task, frame, view, target)
        try:
            async with asyncio.timeout(self.config.max_seconds):
                await self._search(search)
        except StopSearch as exc:
            search.result.reason = str(exc)
        except TimeoutError:
            raise WallTimeSpent(f"budget: wall time of {self.config.max_seconds:g}s spent") from None
        return search.result

    async def _search(self, search: Search) -> None:
        result, task = search.result, search.task
        answer, verdict = await self.read(search, None)
        if verdict.correct:
            await self.finish(search, answer, verdict)
            return

        result.needs_zoom = True
        if self.config.planner_actions in ACTION_SPACES:  # the planner chooses among proposals (agent/candidates.py)
            await named_object(ACTION_SPACES[self.config.planner_actions])(self, search, answer, verdict)
            return
        sees = "planner" not in self.roles.blind
        instructions = self.prompts.render("planner" if sees else "planner_text", width=search.view.width,
                                           height=search.view.height, boxes=self._wording("planner", search.view),
                                           max_steps=self.config.max_steps, max_zooms=self.config.max_zooms)
        naming = self.prompts.render("planner_targets" if sees else "planner_text_targets", width=search.view.width,
                                     height=search.view.height,
                                     question_text=question_text(task.question, task.options))
        # the planner's conversation starts as every request about the frame does, then its instructions (the
        # same for every search on the frame), then this search: naming the targets is its first turn, so each
        # later turn is served from the turns before it (docs/speed.md, "Prefix-stable requests")
        messages = (self._about([search.frame], f"{instructions}\n\n{naming}") if sees
                    else [ChatMessage("system", instructions), ChatMessage("user", naming)])
        step = self.add_step(search, Step(action="locate"))
        targets = await self.converse(search, step, "planner", self.roles.planner, messages, Targets)
        search.targets = targets.missing
        step.arguments = {"targets": targets.missing}
        step.thought = f"I cannot answer; these objects are missing or unclear: {', '.join(targets.missing)}."
        step.observation = "search targets named"
        messages.append(ChatMessage("user", self.prompts.render("planner_start", answer=repr(answer),
                                                                reason=verdict.reason)))
        for _ in range(self.config.max_steps):
            step = self.add_step(search, Step(action="locate"))
            action = await self.converse(search, step, "planner", self.roles.planner, messages,
                                         PlannerAction if sees else TextPlannerAction)
            step.action, step.thought = action.action, action.thought
            step.arguments = action.model_dump(exclude={"thought", "action"}, exclude_none=True)
            images = await self._act(search, step, action)
            messages.append(ChatMessage("user", step.observation, images) if sees else
                            ChatMessage("user", text_observation(step, lambda box: self._shown(box, search.view))))
            if search.evidence is not None:
                await self.finish(search, *search.verified)
                return
        raise StopSearch(f"budget: {self.config.max_steps} planner steps without a verified answer")

    # ------------------------------------------------------------------ actions

    def _about(self, images: list[Image.Image], text: str) -> list[ChatMessage]:
        """A request about `images` (the frame first, when it is shown) laid out as every request about the frame."""
        return about_images(self.prompts.render("system"), images, text)

    def _wording(self, role: str, view: View) -> str:
        """How the prompts of `role` state its box convention."""
        return self.roles.convention(role).describe(view.width, view.height)

    def _shown(self, box: Box, view: View) -> list:
        """A frame box as the planner writes boxes, for the observations it reads."""
        return write_box(box, self.roles.convention("planner"), view.width, view.height)

    async def _act(self, search: Search, step: Step, action: PlannerAction) -> list[Image.Image]:
        """Carry out one action; its outcome (or what was wrong with it) becomes the step's observation."""
        view = search.view
        if action.action == "locate":
            await self.locate(search, step, action.phrase)
            return []
        if action.action == "answer":
            self.check_answer(search, step, action.answer)
            return []
        box = None
        if action.box is not None:
            try:
                box = read_box(action.box, self.roles.convention("planner"), view.width, view.height)
            except ValueError as exc:
                step.observation = f"invalid box: {exc}"
                return []
        if action.action == "adjust":
            step.box = adjust_box(box, action.instruction, action.direction, view.width, view.height)
            step.observation = f"adjusted box: {self._shown(step.box, view)}"
            return []
        if action.action == "zoom":
            if len(search.zooms) >= self.config.max_zooms:
                step.observation = f"zoom budget spent ({self.config.max_zooms}); read a box or answer"
                return []
            step.box = box
            search.zooms.append(box)
            crop = crop_zoom(search.frame, box)
            step.observation = f"the zoomed view of {self._shown(box, view)} ({crop.width}x{crop.height})"
            return [crop]
        step.box = box
        await self.read(search, box, step)
        return []

    async def locate(self, search: Search, step: Step, phrase: str) -> None:
        view = search.view
        if self.roles.detector is not None:
            def detect() -> list[Detection]:
                if getattr(self.roles.detector, "concurrent", False):  # it batches concurrent callers (Ray)
                    return self.roles.detector.detect([(search.frame, [phrase])])[0]
                with self.detector_lock:
                    return self.roles.detector.detect([(search.frame, [phrase])])[0]
            start = time.perf_counter()
            detections = await asyncio.to_thread(detect)
            step.seconds += round(time.perf_counter() - start, 4)
        else:
            prompt = self.prompts.render("locator", phrase=phrase, width=view.width, height=view.height,
                                         boxes=self._wording("locator", view))
            reply = await self._ask(search, step, "locator", self.roles.locator, self._about([search.frame], prompt),
                                    LocateReply)
            detections, invalid = [], []
            for values in reply.boxes:
                try:
                    detections.append(Detection(box=read_box(values, self.roles.convention("locator"), view.width,
                                                             view.height), score=1.0, label=phrase))
                except ValueError as exc:
                    invalid.append(str(exc))
            if invalid:
                step.observation = "ignored: " + "; ".join(invalid) + ". "
        step.detections = detections
        for detection in detections:
            search.found.setdefault(detection.box, phrase)
        shown = ", ".join(f"{self._shown(d.box, view)} ({d.score:.2f})" for d in detections)
        step.observation += f"{len(detections)} candidate(s) for {phrase!r}" + (f": {shown}" if shown else "")

    async def read(self, search: Search, box: Box | None, step: Step | None = None) -> tuple[str | None, Verdict]:
        """The reader answers from the frame (box None) or the crop of `box`; the verifier checks it."""
        task = search.task
        step = step or self.add_step(search, Step(action="read", arguments={"box": None}))
        try:
            if isinstance(self.roles.reader, OcrReader):
                answer = await self._ocr_read(search, step, box)
            else:
                image = search.frame if box is None else crop_zoom(search.frame, box)
                prompt = self.prompts.render("reader", question_text=question_text(task.question, task.options))
                reply = await self._ask(search, step, "reader", self.roles.reader, self._about([image], prompt),
                                        ReaderReply)
                answer = as_option(reply.answer.strip(), task.options)
        except StopSearch as exc:
            if box is not None:
                raise
            answer = None  # the direct attempt failed; the search goes on and the reason stays in the step
            step.observation = f"{exc}; "
        verdict = await self._verify(search, step, answer)
        if verdict.correct and box is not None:
            search.evidence, search.verified = box, (answer, verdict)
        hint = "" if verdict.correct or box is None or search.target is None else f"; {box_hint(box, search.target)}"
        step.observation += f"the reader answered {answer!r}; verifier: {verdict.reason}{hint}"
        return answer, verdict

    async def _ocr_read(self, search: Search, step: Step, box: Box | None) -> str | None:
        """The OCR reader: on the whole frame it reads where the question points (its grid cell, else the cell
        of the ground-truth box, as the OCR agent does); on a zoom, the line over the zoomed box."""
        view = search.view
        focus = box
        if box is None:
            try:
                focus = OcrSearchAgent.search_region(search.task, view)[1]
            except ValueError:  # a question that points nowhere: the reader looks at the whole frame
                focus = (0, 0, view.width, view.height)
        start = time.perf_counter()
        text = await asyncio.to_thread(self.roles.reader.read, search.frame, box, focus)
        step.seconds = round(step.seconds + time.perf_counter() - start, 4)
        return as_option(text.strip(), search.task.options) if text else None

    def check_answer(self, search: Search, step: Step, text: str) -> None:
        """A final answer counts only with evidence: a box whose reading the verifier accepted."""
        answer = as_option(text.strip(), search.task.options)
        verdict = verify_answer(answer, as_option(search.task.answer, search.task.options))
        if not verdict.correct:
            step.observation = f"verifier: the answer is not right ({verdict.reason}); keep searching"
        else:
            step.observation = "verifier: read the box that shows the answer before answering"

    async def _verify(self, search: Search, step: Step, answer: str | None) -> Verdict:
        task = search.task
        verdict = verify_answer(answer, as_option(task.answer, task.options))
        if verdict.correct or self.roles.judge is None or task.options or not answer or task.answer is None:
            return verdict
        prompt = self.prompts.render("verifier", question=task.question, expected=task.answer, predicted=answer)
        judged = await self._ask(search, step, "verifier", self.roles.judge, [ChatMessage("user", prompt)], JudgeReply)
        return Verdict(correct=judged.correct, predicted=answer, expected=task.answer,
                       reason=f"LLM judge: {judged.reason}")

    # ------------------------------------------------------------------ summary

    async def finish(self, search: Search, answer: str | None, verdict: Verdict) -> None:
        result = search.result
        kept, detours = chain_boxes(search.zooms, search.evidence) if search.evidence else ([], [])
        target = next((phrase for box, phrase in search.found.items()
                       if overlap_area(box, kept[-1]) > 0), None) if kept else None
        target = target or (search.targets[0] if search.targets else "the detail")
        step = self.add_step(search, Step(action="answer", arguments={"text": answer}))
        if self.roles.summariser is None:
            thoughts, final = self._template_summary(kept, detours, target, answer)
        else:
            thoughts, final = await self._llm_summary(search, step, kept, detours, answer)
        result.chain = [ChainStep(thought=t, box=b, label=target) for t, b in zip(thoughts, kept)]
        result.final_thought = final
        result.answer, result.verdict, result.accepted = answer, verdict, True

    def _template_summary(self, kept: list[Box], detours: list[Box], target: str,
                          answer: str | None) -> tuple[list[str], str]:
        if not kept:
            return [], self.prompts.render("summary_direct", answer=answer)
        detour = (self.prompts.render("summary_detour", boxes=", ".join(str(list(b)) for b in detours),
                                      target=target) + " ") if detours else ""
        thoughts = [self.prompts.render("summary_zoom", detours=detour, target=target, box=list(kept[0]))]
        thoughts += [self.prompts.render("summary_refine", target=target, box=list(b)) for b in kept[1:]]
        return thoughts, self.prompts.render("summary_answer", target=target, answer=answer)

    async def _llm_summary(self, search: Search, step: Step, kept: list[Box], detours: list[Box],
                           answer: str | None) -> tuple[list[str], str]:
        task = search.task
        prompt = self.prompts.render(
            "summariser", question_text=question_text(task.question, task.options), answer=answer,
            targets=", ".join(search.targets) or "nothing (readable directly)", width=search.view.width,
            height=search.view.height, chain=json.dumps([list(b) for b in kept]),
            detours=json.dumps([list(b) for b in detours]), count=len(kept))
        if "summariser" in self.roles.blind:
            messages = [ChatMessage("user", prompt)]
        else:
            messages = self._about([search.frame] + [crop_zoom(search.frame, box) for box in kept], prompt)
        summary = await self._ask(search, step, "summariser", self.roles.summariser, messages,
                                  summary_schema(len(kept)))
        return summary.thoughts, summary.final_thought

    # ------------------------------------------------------------------ calls and budgets

    @staticmethod
    def add_step(search: Search, step: Step) -> Step:
        search.result.steps.append(step)
        return step

    async def _ask(self, search: Search, step: Step, role: str, model: ChatModel, messages: list[ChatMessage],
                   schema: type[BaseModel]) -> BaseModel:
        """One validated reply; every call it took is recorded in `step`, and the token budget is checked."""
        return (await self._reply(search, step, role, model, messages, schema))[0]

    async def converse(self, search: Search, step: Step, role: str, model: ChatModel,
                       messages: list[ChatMessage], schema: type[BaseModel]) -> BaseModel:
        """A turn of a conversation: the reply, appended to `messages` as the model wrote it, so that the next
        request begins with the tokens the server computed while writing it (a re-serialised reply differs in
        spacing and key order, and its tokens would be computed again)."""
        reply, text = await self._reply(search, step, role, model, messages, schema)
        messages.append(ChatMessage("assistant", text))
        return reply

    async def _reply(self, search: Search, step: Step, role: str, model: ChatModel, messages: list[ChatMessage],
                     schema: type[BaseModel]) -> tuple[BaseModel, str]:
        """A validated reply and its text as written."""
        try:
            reply, completions = await complete_json(model, messages, schema, max_tokens=self.config.reply_tokens)
        except ReplyError as exc:
            self._record(search, step, role, exc.completions)
            raise StopSearch(f"{role}: {exc}") from None
        self._record(search, step, role, completions)
        if search.tokens > self.config.max_tokens:
            raise StopSearch(f"budget: {search.tokens} tokens spent (max_tokens {self.config.max_tokens})")
        return reply, completions[-1].text

    @staticmethod
    def _record(search: Search, step: Step, role: str, completions: list[Completion]) -> None:
        for c in completions:
            step.calls.append(c.as_call(role))
            step.tokens += c.prompt_tokens + c.completion_tokens
            step.seconds = round(step.seconds + c.seconds, 4)
            search.tokens += c.prompt_tokens + c.completion_tokens
