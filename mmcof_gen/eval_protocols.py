"""Eval's protocols by name (`eval --protocol`, `EvalSettings.protocol`): the one registry the settings, the CLI
and every step of `evaluate` read. A protocol is what two evaluations of one model may do differently
(docs/eval.md, "Two protocols"): the frame, the first turn, what a tool call gives back, where the answer is
read, how it is scored, what its judge is sent, what the model's image tokens must be, and whether its rows may
stand next to published numbers. The loop, the records and the report are eval's own, the same for both.

- `mmcof` (the default): this project's; strict about tool calls, lenient about how an answer is written.
- `cof-release`: the published Chain-of-Focus V* protocol to the letter (its rules are `cof_release`'s).

    protocol = PROTOCOLS[settings.protocol]
    zoom = await protocol.zoom(reply, frame, shown, target, room=True)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from PIL import Image

from mmcof_gen import benchmarks, cof_format, cof_release, resources
from mmcof_gen.conventions import CONVENTIONS, read_box
from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import frame_from_image, load_image
from mmcof_gen.models.chat import ChatMessage, ChatModel, ChatModelConfig
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Box
from mmcof_gen.scoring import Score
from mmcof_gen.targets import DEFAULT_TARGET, Target
from mmcof_gen.tasks.vstar import BenchItem

PROMPTS = Prompts(resources.prompts("eval"))
TOOL_RESULT_TEXT = cof_format.TOOL_RESULT.removeprefix(cof_format.IMAGE)  # what follows the crop image
Mode = Literal["cof", "no_zoom"]


@dataclass(frozen=True)
class Zoom:
    """What one tool call gives back: the turn sent to the model (None: no room for another image, the episode
    stops), the box it cropped (frame pixels) and why the call was not executed as written."""

    turn: ChatMessage | None
    box: Box | None = None
    problem: str | None = None


class EvalProtocol(Protocol):
    """One protocol: each step of an episode where protocols differ, and what they declare about a run."""

    name: str
    comparable: bool
    """its R=3840 rows may stand next to the published numbers (`evaluate.not_comparable` says when they do)"""
    whole_frames: bool
    """every frame reaches the model whole: an in-process processor is widened to the zoom tool's bounds and a
    server that downsizes a frame is refused (`evaluate.check_image_tokens`)"""
    unanswered: str | None
    """the answer of an episode that gave none"""

    def check(self, items: list[BenchItem], target: str | None, baseline_no_zoom: bool, decoding: dict | None,
              judge: ChatModel | None) -> None:
        """ConfigError, naming the flag, for a run this protocol cannot make; before the first request."""

    def judge_config(self, config: ChatModelConfig) -> ChatModelConfig:
        """The judge's config as this protocol sends its requests."""

    def make_frame(self, path: Path, resolution: int, max_pixels: int, target: Target) -> Image.Image:
        """The frame at R of an image file."""

    def first_messages(self, frame: Image.Image, question: str, options: list[str] | None, text: str | None,
                       mode: Mode, target: Target) -> list[ChatMessage]:
        """The system turn and the first user turn (`text`: the benchmark's question text, when it ships one)."""

    def answer(self, reply: str) -> str | None:
        """The answer of a final reply (one without a tool call)."""

    async def zoom(self, reply: str, frame: Image.Image, shown: list[Image.Image], target: Target,
                   room: bool) -> Zoom:
        """What a reply with a tool call gets back (`shown`: the episode's images so far; `room`: another fits)."""

    async def score(self, item: BenchItem, answer: str | None, judge: ChatModel | None) -> Score:
        """The verdict on an episode's answer."""

    def checked_tokens(self, model: str, found: dict[str, dict]) -> dict[str, dict]:
        """Each R's frame and image tokens (`evaluate.check_image_tokens`) as this protocol requires them."""


def first_messages(frame: Image.Image, question: str, options: list[str] | None, mode: Mode,
                   system_prompt: str = cof_format.SYSTEM_PROMPT) -> list[ChatMessage]:
    """System + first user turn: the CoF prompt with the tool (`system_prompt`: the student's own declaration of
    it), or (baseline) a plain assistant, no tool."""
    if mode == "no_zoom":
        return [ChatMessage("system", PROMPTS.render("direct_system")),
                ChatMessage("user", cof_format.question_text(question, options), [frame])]
    return [ChatMessage("system", system_prompt),
            ChatMessage("user", cof_format.question_text(question, options) + cof_format.FORMAT_SUFFIX, [frame])]


def zoom_call(reply: str, frame: Image.Image, target: Target) -> tuple[Box, dict]:
    """(the box in frame pixels, the arguments) of the reply's first tool call, read in the box convention of
    the model's `target` (Qwen3-VL: 0-1000); ValueError (the reason) when invalid."""
    call = cof_format.parse_tool_call(reply)
    if call is None:
        raise ValueError("the <tool_call> has no closing </tool_call>")
    return read_box(call["arguments"]["bbox_2d"], CONVENTIONS[target.boxes], *frame.size), call["arguments"]


class Mmcof:
    """This project's protocol: the student's own frame, prompt and zoom tool; an invalid call gets a text error
    back; the last answer, scored by the benchmark's rules (and the judge, when given)."""

    name = "mmcof"
    comparable = False
    whole_frames = True
    unanswered = None

    def check(self, items: list[BenchItem], target: str | None, baseline_no_zoom: bool, decoding: dict | None,
              judge: ChatModel | None) -> None:
        return None

    def judge_config(self, config: ChatModelConfig) -> ChatModelConfig:
        return config

    def make_frame(self, path: Path, resolution: int, max_pixels: int, target: Target) -> Image.Image:
        return target.make_frame(path, resolution, max_pixels)

    def first_messages(self, frame: Image.Image, question: str, options: list[str] | None, text: str | None,
                       mode: Mode, target: Target) -> list[ChatMessage]:
        return first_messages(frame, question, options, mode, target.system_prompt)

    def answer(self, reply: str) -> str | None:
        return cof_format.extract_answer(reply)

    async def zoom(self, reply: str, frame: Image.Image, shown: list[Image.Image], target: Target,
                   room: bool) -> Zoom:
        try:
            box, arguments = zoom_call(reply, frame, target)
            crop = await asyncio.to_thread(target.crop, shown, arguments) if room else None
        except ValueError as exc:  # parse_tool_call's reasons, InvalidBox
            error = PROMPTS.render("tool_error", reason=exc, width=frame.width, height=frame.height)
            return Zoom(ChatMessage("user", error + cof_format.FORMAT_SUFFIX), problem=str(exc))
        return Zoom(None) if crop is None else Zoom(ChatMessage("user", TOOL_RESULT_TEXT, [crop]), box)

    async def score(self, item: BenchItem, answer: str | None, judge: ChatModel | None) -> Score:
        return await benchmarks.score_answer(item, answer, judge, PROMPTS)

    def checked_tokens(self, model: str, found: dict[str, dict]) -> dict[str, dict]:
        return found


class CofRelease:
    """The release's protocol (`cof_release`): V*'s text verbatim, every call a zoom, the first answer, its rules
    and judge; the model sees frames through the checkpoint's own processor limits, as the release's did."""

    name = "cof-release"
    comparable = True
    whole_frames = False
    unanswered = ""  # the release judges an episode without an answer as the empty answer

    def check(self, items: list[BenchItem], target: str | None, baseline_no_zoom: bool, decoding: dict | None,
              judge: ChatModel | None) -> None:
        """What the release had: V*'s question texts, its target, no baseline, a judge, plain greedy decoding."""
        if any(item.text is None or not item.options for item in items):
            raise ConfigError("--protocol cof-release sends V*'s question text verbatim: pass a --bench folder (or "
                              "file) with test_questions.jsonl, as the V* dataset ships it")
        if target not in (None, DEFAULT_TARGET):
            raise ConfigError(f"--protocol cof-release evaluates in the release's {DEFAULT_TARGET} convention; drop "
                              f"--target {target} or use --protocol mmcof")
        if baseline_no_zoom:
            raise ConfigError("--protocol cof-release has no no-zoom baseline (the release has none); "
                              "drop --baseline-no-zoom")
        if judge is None:
            raise ConfigError("--protocol cof-release sends every answer its rules cannot score to an LLM judge: "
                              "pass --judge-endpoint URL --judge-model NAME")
        if decoding and (decoding.get("top_p") != 1.0 or decoding.get("repetition_penalty") != 1.0):
            raise ConfigError(f"--protocol cof-release decodes greedily with top_p 1.0 and repetition_penalty 1.0; "
                              f"the model config says {decoding}")
        config = getattr(judge, "config", None)
        if isinstance(config, ChatModelConfig) and config.decoding(None, 0.0) != {"temperature": 0.0}:
            raise ConfigError(f"--protocol cof-release sends the judge only temperature 0, as the release does; its "
                              f"config sends {config.decoding(None, 0.0)}: build it with cof_release.judge_config")

    def judge_config(self, config: ChatModelConfig) -> ChatModelConfig:
        return cof_release.judge_config(config)

    def make_frame(self, path: Path, resolution: int, max_pixels: int, target: Target) -> Image.Image:
        """The release decodes the whole JPEG, then resizes."""
        return frame_from_image(load_image(path, max_pixels), resolution)

    def first_messages(self, frame: Image.Image, question: str, options: list[str] | None, text: str | None,
                       mode: Mode, target: Target) -> list[ChatMessage]:
        if text is None:  # a question without V*'s text (a test's): asked as the default protocol asks it
            return first_messages(frame, question, options, mode, target.system_prompt)
        return [ChatMessage("system", cof_format.SYSTEM_PROMPT),
                ChatMessage("user", cof_release.question_text(text), [frame])]

    def answer(self, reply: str) -> str | None:
        return cof_release.extract_answer(reply)

    async def zoom(self, reply: str, frame: Image.Image, shown: list[Image.Image], target: Target,
                   room: bool) -> Zoom:
        image, box, problem = await asyncio.to_thread(cof_release.zoom, frame, reply)
        box = tuple(round(v) for v in box) if box else None  # the record keeps whole pixels
        return Zoom(ChatMessage("user", TOOL_RESULT_TEXT, [image]), box, problem)

    async def score(self, item: BenchItem, answer: str | None, judge: ChatModel | None) -> Score:
        """Its rules on the letter, else its judge (which sees the bare letter)."""
        decided = cof_release.score_by_rules(answer, item.label, item.text)
        if decided is not None:
            return Score(decided, "rule")
        prompt = cof_release.judge_prompt(item.text, item.label, answer)
        reply = await judge.complete([ChatMessage("system", cof_release.JUDGE_SYSTEM), ChatMessage("user", prompt)],
                                     max_tokens=None, temperature=0.0)
        return Score(cof_release.read_judgement(reply.text), "judge")

    def checked_tokens(self, model: str, found: dict[str, dict]) -> dict[str, dict]:
        """Each counted R must give the model the release's image tokens; marks those checked."""
        for resolution, entry in found.items():
            expected = cof_release.image_tokens(*entry["frame"])
            if entry["tokens"] is not None and entry["tokens"] != expected:
                width, height = entry["frame"]
                raise ConfigError(f"--protocol cof-release: {model} turns the {width}x{height} frame of "
                                  f"R={resolution} into {entry['tokens']} image tokens, the release's processor into "
                                  f"{expected}: serve the model with its checkpoint's own image limits (no "
                                  "--mm-processor-kwargs max_pixels), or use --protocol mmcof")
            entry["release"] = entry["tokens"] is not None
        return found


PROTOCOLS: dict[str, EvalProtocol] = {protocol.name: protocol for protocol in (Mmcof(), CofRelease())}
DEFAULT_PROTOCOL = "mmcof"
