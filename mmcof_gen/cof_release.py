"""The published Chain-of-Focus V* protocol (`eval --protocol cof-release`): what its evaluation loop and its
judge script do where they differ from this project's own protocol, rule for rule (docs/eval.md).

- question: V*'s `text` as shipped (options and instruction included), `Question: {text}` + FORMAT_SUFFIX;
- a reply holding `<tool_call>` is a zoom turn whatever the call says: a box inside the frame is cropped
  (enlarged, then truncated); a box outside the frame, a call that is not JSON or has no closing tag zooms
  on the whole frame (upscaled 2x, capped at 3840^2); a call without `arguments.bbox_2d`, with another
  element count, or a crop that cannot be resized sends the frame unchanged; the tool name is not checked;
- the answer: the text inside `\\boxed{...}` when the reply has one, then the FIRST `<answer>...</answer>`
  on one line (none: the empty string);
- scoring, case-sensitive, against the option letter: `A`, a two-character answer with a dot holding the
  letter (`A.`), a three-character one with both parentheses (`(A)`), or an answer containing `(A) <option
  text>` exactly; anything else (the empty answer included) goes to the LLM judge, whose reference is the
  bare letter and whose reply is read as the release reads it; the judge request carries only
  `temperature: 0` (the server chooses the rest, as for the release's OpenAI client);
- the image the model sees: the checkpoint's own processor limits (Qwen2.5-VL: 3136 to 12,845,056 pixels,
  sides multiples of 28), so an R=3840 frame is resized again inside the model (`image_tokens`).

    image, box, problem = zoom(frame, reply)   # what goes back to the model; the box cropped; what went wrong
"""

from __future__ import annotations

import json
import re

from PIL import Image

from mmcof_gen import cof_format, resources
from mmcof_gen.imaging import smart_resize, zoom_image, zoom_region
from mmcof_gen.models.chat import ChatModelConfig

MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 16384  # Qwen2.5-VL-7B's preprocessor_config.json, which the release used
JUDGE_SYSTEM = "You are a helpful assistant."
JUDGE_PROMPT = (resources.prompts("cof") / "release_judge.txt").read_text(
    encoding="utf-8").removesuffix("\n")
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>")  # no DOTALL: an answer spanning lines is not found
_OPTION = re.compile(r"\(([A-D])\)\s+([^\n]+)")


def question_text(text: str) -> str:
    """The first user turn's text: V*'s question text verbatim."""
    return f"Question: {text}{cof_format.FORMAT_SUFFIX}"


def zoom(frame: Image.Image, reply: str) -> tuple[Image.Image, tuple | None, str | None]:
    """What the release sends back for a reply with `<tool_call>`: (image, the box cropped, why not a crop)."""
    width, height = frame.size
    match = _TOOL_CALL.search(reply)
    if match is None:
        return _whole(frame, "no closing </tool_call>: the whole frame, upscaled")
    try:
        call = json.loads(match.group(1).strip())
    except json.JSONDecodeError:
        return _whole(frame, "not valid JSON: the whole frame, upscaled")
    try:
        x1, y1, x2, y2 = call["arguments"]["bbox_2d"]
    except (KeyError, TypeError, ValueError, IndexError):
        return frame, None, "no bbox_2d of 4 elements: the frame, unchanged"
    box = [x1, y1, x2, y2]
    numbers = all(isinstance(v, (int, float)) for v in box)
    if not (numbers and 0 <= x1 < width and 0 <= y1 < height and 0 < x2 <= width and 0 < y2 <= height
            and x2 > x1 and y2 > y1):
        return _whole(frame, f"box {box} is not inside the {width}x{height} frame: the whole frame, upscaled")
    try:
        return zoom_image(frame, zoom_region(box, width, height)), tuple(box), None
    except ValueError:  # a region too thin, or empty, to resize
        return frame, None, f"box {box} zooms to a region that cannot be resized: the frame, unchanged"


def _whole(frame: Image.Image, note: str) -> tuple[Image.Image, None, str]:
    try:
        return zoom_image(frame, (0, 0, *frame.size)), None, note
    except ValueError:
        return frame, None, note


def extract_answer(reply: str) -> str:
    """The answer as the release's judge script reads it from the final reply ("" when there is none)."""
    if "\\boxed" in reply:
        parts = reply.split("\\boxed{")
        reply = parts[1].split("}")[0] if len(parts) > 1 else ""
    match = _ANSWER.search(reply.replace("<|im_end|>", ""))
    return match.group(1) if match else ""


def score_by_rules(predicted: str, label: str, text: str) -> bool | None:
    """The release's rules, against the option letter `label`; None: the judge decides."""
    options = dict(_OPTION.findall(text))
    if len(predicted) == 1:
        return predicted == label
    if len(predicted) == 2 and "." in predicted:
        return label in predicted
    if len(predicted) == 3 and "(" in predicted and ")" in predicted:
        return label in predicted
    if label in options and f"({label}) {options[label]}" in predicted:
        return True
    return None


def judge_prompt(text: str, label: str, predicted: str) -> str:
    return JUDGE_PROMPT.format(question=text, ground_truth=label, predicted=predicted)


def read_judgement(reply: str) -> bool:
    """The judge's verdict as the release reads it: after the last `Judgement:`, a 1 anywhere is right."""
    reply = reply.strip()
    if "Judgement:" in reply:
        verdict = reply.split("Judgement:")[-1].strip()
        return "1" in verdict
    return reply == "1"


def image_tokens(width: int, height: int) -> int:
    """The image tokens of a width x height image under the release's processor (28 x 28 pixels a token)."""
    h_bar, w_bar = smart_resize(height, width, 28, MIN_PIXELS, MAX_PIXELS)
    return h_bar * w_bar // (28 * 28)


def judge_config(config: ChatModelConfig) -> ChatModelConfig:
    """The judge as the release's script calls it: `temperature=0` and nothing else (no top_p, no
    repetition_penalty; `score_release` sends no max_tokens)."""
    return config.model_copy(update={"top_p": None, "repetition_penalty": None})
