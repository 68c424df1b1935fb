"""The chain-of-focus sample format (docs/format.md): what export writes, finetune trains on and
eval speaks, so that our data and the published CoF checkpoints are interchangeable.

The system prompt and the format suffix are files in `prompts/cof/`, byte-identical to the CoF
release's evaluation loop.
"""

from __future__ import annotations

import json
import re
from mmcof_gen import resources
from mmcof_gen.schema import Box, Trajectory

_PROMPTS = resources.prompts("cof")
SYSTEM_PROMPT = (_PROMPTS / "system.txt").read_text(encoding="utf-8").removesuffix("\n")
FORMAT_SUFFIX = "\n" + (_PROMPTS / "format_suffix.txt").read_text(encoding="utf-8").removesuffix("\n")
TOOL_NAME = "image_zoom_in_tool"
IMAGE = "<image>"
ZOOMIN = "<|image_zoomin|>"  # the older single-turn form's zoom marker (export/v1.py); not a Qwen2.5-VL token
TOOL_RESULT = IMAGE + FORMAT_SUFFIX  # "<image>\n" + the suffix without its leading newline
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."

_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def option_letter(index: int) -> str:
    return chr(ord("A") + index)


def question_text(question: str, options: list[str] | None) -> str:
    """`Question: ...` with the options on their own lines and the answer instruction."""
    if options:
        lines = "".join(f"\n({option_letter(i)}) {option}" for i, option in enumerate(options))
        return f"Question: {question}{lines}\n{MC_INSTRUCTION}"
    return f"Question: {question}\n{OPEN_INSTRUCTION}"


def user_prompt(question: str, options: list[str] | None) -> str:
    """The first user turn of a sample: the frame, then the question, with nothing between them, exactly as
    the evaluation loop sends it (a space here would be a token the model sees in training and never at test)."""
    return f"{IMAGE}{question_text(question, options)}{FORMAT_SUFFIX}"


def tool_call(box: Box, label: str | None = None) -> str:
    arguments: dict = {"bbox_2d": [int(v) for v in box]}
    if label:
        arguments["label"] = label
    return call_text(arguments)


def call_text(arguments: dict) -> str:
    """One `<tool_call>` of the zoom tool with these arguments (each export target has its own signature)."""
    return "<tool_call>\n" + json.dumps({"name": TOOL_NAME, "arguments": arguments}) + "\n</tool_call>"


def zoom_turn(thought: str, box: Box, label: str | None = None) -> str:
    return call_turn(thought, tool_call(box, label))


def call_turn(thought: str, call: str) -> str:
    return f"<think> {thought} </think>\n{call}"


def answer_turn(thought: str, answer: str) -> str:
    return f"<think> {thought} </think>\n<answer> {answer} </answer>"


def build_messages(
    question: str,
    options: list[str] | None,
    chain: list[tuple[str, Box]],
    final_thought: str,
    answer: str,
    system_prompt: str = SYSTEM_PROMPT,
) -> list[dict]:
    """ShareGPT-style messages; `images[0]` is the frame and `images[k]` the crop of the k-th zoom."""
    return conversation(question, options, [zoom_turn(thought, box) for thought, box in chain], final_thought,
                        answer, system_prompt)


def conversation(question: str, options: list[str] | None, zoom_turns: list[str], final_thought: str, answer: str,
                 system_prompt: str) -> list[dict]:
    """The messages of a sample whose assistant zoom turns are `zoom_turns`, each followed by its crop."""
    messages = [{"role": "system", "content": system_prompt},
                {"role": "user", "content": user_prompt(question, options)}]
    for turn in zoom_turns:
        messages.append({"role": "assistant", "content": turn})
        messages.append({"role": "user", "content": TOOL_RESULT})
    messages.append({"role": "assistant", "content": answer_turn(final_thought, answer)})
    return messages


def stated_answer(answer: str, options: list[str] | None) -> str:
    """An answer as a sample states it: the option letter for multiple choice, else the text."""
    if options and answer in options:
        return option_letter(options.index(answer))
    return answer


def answer_for(trajectory: Trajectory) -> str:
    return stated_answer(trajectory.answer or "", trajectory.task.options)


def trajectory_messages(trajectory: Trajectory, system_prompt: str = SYSTEM_PROMPT) -> list[dict]:
    return build_messages(trajectory.task.question, trajectory.task.options,
                          [(step.thought, step.box) for step in trajectory.chain],
                          trajectory.final_thought, answer_for(trajectory), system_prompt)


def parse_tool_call(text: str) -> dict | None:
    """The first `<tool_call>` of a reply as {"name", "arguments"}, or None when there is none.

    Raises ValueError (with the reason, to show the model) when a call is there but malformed.
    """
    match = _TOOL_CALL.search(text)
    if match is None:
        return None
    try:
        call = json.loads(match.group(1).strip())
    except json.JSONDecodeError as exc:
        raise ValueError(f"the tool call is not valid JSON: {exc.msg}") from None
    if not isinstance(call, dict) or call.get("name") != TOOL_NAME or not isinstance(call.get("arguments"), dict):
        raise ValueError(f'a tool call must be {{"name": "{TOOL_NAME}", "arguments": {{"bbox_2d": [x1, y1, x2, y2]}}}}')
    if "bbox_2d" not in call["arguments"]:
        raise ValueError("the tool call has no bbox_2d argument")
    return call


def extract_answer(text: str) -> str | None:
    """The last `<answer>...</answer>` of a reply, stripped (the evaluation convention)."""
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None
