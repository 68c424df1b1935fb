"""The chooser's action space (`agent.planner_actions: choose`): the tools propose, the planner chooses.

A planner that cannot see (a small text LLM) is bad at writing pixel boxes from words. Here it never writes
one: each observation lists numbered candidates (the locator's text lines and boxes, the 3x3 grid cells),
each with its place in words and its size, and the planner replies with a choice:

    {"action": "read", "place": "bottom right", "candidate": 3}
    {"action": "zoom", "place": "top", "candidate": 12}
    {"action": "locate", "phrase": "..."} {"action": "answer", "answer": <one of the readings so far>}

A read or a zoom names the place (a cell of the 3x3 grid, as the question names it) before the number: a small
model copies a place from the question far more easily than it maps a place to an index, and the schema then
allows only the numbers of the candidates in that place. The agent turns a choice into a box (a text line
padded as the OCR agent pads it, a cell as it is). The reply schema of each step names only the actions allowed
then, the places that hold a candidate and the candidate numbers there, so a grammar-decoding server
(llama.cpp) can emit nothing else, and a reply is about twenty tokens. Reading, verifying,
the kept chain and its summary are the agent's (agent/vlm_search.py); the thoughts of the chain say what the
chooser was shown and what it chose.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import BaseModel, ConfigDict, model_validator

from mmcof_gen.agent.base import StopSearch
from mmcof_gen.agent.ocr_search import padded
from mmcof_gen.cof_format import question_text
from mmcof_gen.imaging import crop_to_frame, crop_zoom, zoom_region
from mmcof_gen.models.chat import ChatMessage
from mmcof_gen.models.replies import Phrase
from mmcof_gen.positions import NAMES, cell_box, cell_of, position_name
from mmcof_gen.schema import Box, Step, Verdict

if TYPE_CHECKING:
    from mmcof_gen.agent.vlm_search import Roles, Search
    from mmcof_gen.config import AgentConfig
    from mmcof_gen.models.chat import ChatModel
    from mmcof_gen.prompts import Prompts

class SearchTools(Protocol):
    """What the chooser uses of the agent that runs it (`VlmSearchAgent`): its roles, settings and prompts, and
    the steps of a search that are the agent's whatever the action space (locate, read and verify, a planner
    turn, the answer's check, the finished chain)."""

    roles: Roles
    config: AgentConfig
    prompts: Prompts
    detector_lock: threading.Lock

    @staticmethod
    def add_step(search: Search, step: Step) -> Step: ...

    async def locate(self, search: Search, step: Step, phrase: str) -> None: ...

    async def read(self, search: Search, box: Box | None, step: Step | None = None
                   ) -> tuple[str | None, Verdict]: ...

    async def converse(self, search: Search, step: Step, role: str, model: ChatModel, messages: list[ChatMessage],
                       schema: type[BaseModel]) -> BaseModel: ...

    def check_answer(self, search: Search, step: Step, text: str) -> None: ...

    async def finish(self, search: Search, answer: str | None, verdict: Verdict) -> None: ...


TEXT = "text"  # what the locator is first asked for: the text lines a question about small text depends on


@dataclass(frozen=True)
class Candidate:
    """One proposal: a box in frame pixels, what proposed it, and where it lies (a cell of the 3x3 grid)."""

    number: int
    box: Box
    kind: str  # "text line", "region", or "<phrase>" for a located object
    place: str  # "bottom right": the cell holding its centre (a region: its own cell)
    inside: int | None = None  # the candidate whose zoom found it

    @property
    def where(self) -> str:
        """The place as the list says it."""
        return f"the {self.place} ninth of the image" if self.kind == "region" else f"{self.place} of the image"

    def described(self) -> str:
        x1, y1, x2, y2 = self.box
        inside = f", inside {self.inside}" if self.inside else ""
        return f"{self.kind}, {self.where}, {x2 - x1}x{y2 - y1} pixels{inside}"


class Choice(BaseModel):
    """A chooser's reply; the schema of one step (`choice_schema`) bounds it to that step's options."""

    action: Literal["read", "zoom", "locate", "answer"]
    place: str | None = None  # a read or a zoom names the place before the candidate
    candidate: int | None = None
    phrase: Phrase | None = None
    answer: Phrase | None = None

    @model_validator(mode="after")
    def _arguments(self) -> Choice:
        needed = {"read": "candidate", "zoom": "candidate", "locate": "phrase", "answer": "answer"}[self.action]
        if getattr(self, needed) in (None, ""):
            raise ValueError(f"action {self.action} needs {needed}")
        return self


def choice_schema(read: dict[str, list[int]], zoom: dict[str, list[int]], answers: list[str]) -> type[Choice]:
    """The reply schema of one step: one object per allowed action and place (`read` and `zoom`: place -> the
    numbers of the candidates there that may be chosen), the candidate from an enum of those numbers, an answer
    from the readings so far; only `locate` takes a (bounded) phrase."""
    allowed = {"read": read, "zoom": zoom}
    variants = [{"action": {"const": action}, "place": {"const": place}, "candidate": {"enum": numbers}}
                for action, places in allowed.items() for place, numbers in places.items()]
    variants.append({"action": {"const": "locate"}, "phrase": {"type": "string", "maxLength": 40}})
    if answers:
        variants.append({"action": {"const": "answer"}, "answer": {"enum": answers}})

    def schema(value: dict) -> None:
        value.clear()
        value.update(title="Choice", anyOf=[{"type": "object", "properties": v, "required": list(v),
                                             "additionalProperties": False} for v in variants])

    class StepChoice(Choice):
        model_config = ConfigDict(title="Choice", json_schema_extra=schema)

        @model_validator(mode="after")
        def _bounded(self) -> StepChoice:
            if self.action in allowed and self.candidate not in allowed[self.action].get(self.place, []):
                raise ValueError(f"candidate {self.candidate} cannot be chosen to {self.action} in place "
                                 f"{self.place!r} now: choose a place and one of its numbers from "
                                 f"{allowed[self.action]}")
            if self.action == "answer" and self.answer not in answers:
                raise ValueError(f"answer must be one of the readings so far: {answers}")
            return self

    return StepChoice


class Candidates:
    """The numbered proposals of one search, in the order they were made (numbers never change)."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.items: list[Candidate] = []

    def add(self, box: Box, kind: str, inside: int | None = None) -> Candidate | None:
        if any(c.box == box for c in self.items):
            return None
        place = position_name(cell_of(box, self.width, self.height))
        candidate = Candidate(len(self.items) + 1, box, kind, place, inside)
        self.items.append(candidate)
        return candidate

    def add_cells(self) -> None:
        for row, names in enumerate(NAMES):
            for col, name in enumerate(names):
                box = cell_box((row, col), self.width, self.height)
                self.items.append(Candidate(len(self.items) + 1, box, "region", name))

    def places(self, excluded: set[int]) -> dict[str, list[int]]:
        """place -> the numbers of its candidates not in `excluded`, places in the grid's order."""
        numbers = {name: [c.number for c in self.items if c.place == name and c.number not in excluded]
                   for row in NAMES for name in row}
        return {name: found for name, found in numbers.items() if found}

    def listing(self) -> str:
        return "\n".join(f"{c.number}. {c.described()}" for c in self.items)

    def __getitem__(self, number: int) -> Candidate:
        return self.items[number - 1]


def _box_of(agent: SearchTools, search: Search, candidate: Candidate) -> Box:
    """The box a choice stands for: a region as it is; a text line or an object grown as the OCR agent grows
    a located line (OCR boxes are tight)."""
    if candidate.kind == "region":
        return candidate.box
    return padded(candidate.box, search.frame.size, agent.config.target_padding)


async def _propose(agent: SearchTools, search: Search, candidates: Candidates, phrase: str, step: Step) -> int:
    """The locator's boxes for `phrase` become candidates; returns how many were new."""
    await agent.locate(search, step, phrase)
    kind = "text line" if phrase == TEXT else phrase
    return sum(candidates.add(d.box, kind) is not None for d in step.detections)


def _zoom(agent: SearchTools, search: Search, candidates: Candidates, candidate: Candidate, step: Step) -> None:
    """Zoom into the candidate's box; a detector looks for text in the crop and what it finds is proposed."""
    box = _box_of(agent, search, candidate)
    step.box = box
    search.zooms.append(box)
    crop = crop_zoom(search.frame, box)
    new = []
    if agent.roles.detector is not None:
        region = zoom_region(box, *search.frame.size)
        with agent.detector_lock:
            found = agent.roles.detector.detect([(crop, [TEXT])])[0]
        for detection in found:
            mapped = crop_to_frame(detection.box, crop.size, region)
            if mapped[2] > mapped[0] and mapped[3] > mapped[1]:
                added = candidates.add(mapped, "text line", candidate.number)
                if added:
                    new.append(added.number)
    step.observation = (f"zoomed into candidate {candidate.number}; the tools found {len(new)} new candidate(s) "
                        f"inside it" + (f": {', '.join(map(str, new))}" if new else ""))


def _opening(agent: SearchTools, search: Search, candidates: Candidates, answer: str | None,
             verdict: Verdict) -> list[ChatMessage]:
    """The chooser's first messages: what it can do; the failed whole-frame read, the candidates and the question
    (last, next to the reply that copies its place)."""
    view, config = search.view, agent.config
    return [
        ChatMessage("system", agent.prompts.render("chooser", width=view.width, height=view.height,
                                                   max_steps=config.max_steps, max_zooms=config.max_zooms)),
        ChatMessage("user", agent.prompts.render("chooser_start", answer=answer, reason=verdict.reason,
                                                 candidates=candidates.listing(), question_text=_question(search))),
    ]


def _question(search: Search) -> str:
    return question_text(search.task.question, search.task.options)


async def choose_search(agent: SearchTools, search: Search, answer: str | None, verdict: Verdict) -> None:
    """The search after a failed whole-frame read, planned by choices (the hook in VlmSearchAgent._search)."""

    config, prompts = agent.config, agent.prompts
    candidates = Candidates(search.view.width, search.view.height)
    step = agent.add_step(search, Step(action="locate", arguments={"phrase": TEXT}))
    await _propose(agent, search, candidates, TEXT, step)
    candidates.add_cells()
    step.thought = "I cannot answer from the whole image; the tools propose candidates to look at."
    search.targets = [TEXT]
    messages = _opening(agent, search, candidates, answer, verdict)
    read: set[int] = set()
    zoomed: set[int] = set()
    readings: list[str] = []
    chosen: dict[Box, str] = {}  # box -> the thought of the choice that made it
    for _ in range(config.max_steps):
        schema = choice_schema(candidates.places(read), candidates.places(zoomed)
                               if len(search.zooms) < config.max_zooms else {}, readings)
        step = agent.add_step(search, Step(action="locate"))
        choice = await agent.converse(search, step, "planner", agent.roles.planner, messages, schema)
        step.action = choice.action
        step.arguments = choice.model_dump(exclude={"action"}, exclude_none=True)
        if choice.candidate is not None:
            candidate = candidates[choice.candidate]
            step.thought = prompts.render("chooser_thought", count=len(candidates.items), action=choice.action,
                                          number=candidate.number, described=candidate.described())
            chosen[_box_of(agent, search, candidate)] = step.thought
            if choice.action == "zoom":
                zoomed.add(candidate.number)
                _zoom(agent, search, candidates, candidate, step)
            else:
                read.add(candidate.number)
                step.box = _box_of(agent, search, candidate)
                reading, _ = await agent.read(search, step.box, step)
                if reading and reading not in readings:
                    readings.append(reading)
        elif choice.action == "locate":
            step.thought = f"The tools proposed {len(candidates.items)} candidate(s); I asked them to locate " \
                           f"{choice.phrase!r}."
            new = await _propose(agent, search, candidates, choice.phrase, step)
            step.observation += f"; {new} new candidate(s)"
        else:
            step.thought = f"I chose to answer {choice.answer!r}, one of the readings so far."
            agent.check_answer(search, step, choice.answer)
        messages.append(ChatMessage("user", prompts.render("chooser_step", observation=step.observation,
                                                           candidates=candidates.listing(),
                                                           question_text=_question(search))))
        if search.evidence is not None:
            await agent.finish(search, *search.verified)
            if agent.roles.summariser is None:  # the chain says what the chooser saw and chose
                for link in search.result.chain:
                    link.thought = chosen.get(link.box, link.thought)
            return
    raise StopSearch(f"budget: {config.max_steps} planner steps without a verified answer")
