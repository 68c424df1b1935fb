"""Export targets: the student model a dataset is written for (`export --target`), not its file format.

A target fixes what a sample shows that model: the frame as its processor sizes it, each zoom as a call of
its own zoom tool (that tool's signature and box convention), and each tool result as exactly the crop that
tool makes from the call's arguments. `validate` and `eval` re-execute calls with the same `crop`, so a
target's crop rule lives here once.

- `qwen2.5-vl` (default, the CoF release): the working frame (factor 28), `bbox_2d` in its pixels, the CoF crop
  function (imaging.crop_zoom).
- `qwen3-vl`: the frame smart-resized with factor 32 (patch 16, merge 2), `image_zoom_in_tool` with
  `bbox_2d` in 0-1000, `label` and `img_idx` (Qwen-Agent `qwen_agent/tools/image_zoom_in_qwen3vl.py`), each crop
  made by that tool's rule (`qwen3_zoom`). The box of a call is the region the CoF crop showed the reader (the
  chain box enlarged 1.5x), so the crop still shows what the verified answer was read from.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from mmcof_gen import cof_format, resources
from mmcof_gen.conventions import CONVENTIONS, by_family, write_box
from mmcof_gen.imaging import (MIN_PIXELS, ImageError, InvalidBox, crop_zoom, image_size, load_image, make_frame,
                               smart_resize, zoom_region)
from mmcof_gen.replay import FrameSource, ReplayError, chain_crops
from mmcof_gen.schema import Trajectory, View

# Qwen3-VL's image processor (transformers Qwen2VLImageProcessor with the Qwen3-VL checkpoints'
# preprocessor_config.json: patch_size 16, merge_size 2, size.shortest_edge 65536).
QWEN3_FACTOR = 32
QWEN3_MIN_PIXELS = 65536
QWEN3_MAX_PIXELS = 16777216
# Qwen-Agent's image_zoom_in_tool for Qwen3-VL: boxes under 32 px grow to 32 about their centre; the crop is
# smart-resized with factor 32 within [256*32*32, 12845056] pixels, bicubic.
QWEN3_TOOL_MIN_SIDE = 32
QWEN3_TOOL_MIN_PIXELS = 256 * 32 * 32
QWEN3_TOOL_MAX_PIXELS = 12845056
QWEN3_LABEL = "the detail"  # a zoom's label when the chain step names none (the tool requires one)

_BOX_TEXT = re.compile(r"\[(\d+), (\d+), (\d+), (\d+)\]")


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    """the model family as people write it, for messages"""
    factor: int
    """pixels per image-token side of its processor (patch x merge): frames are resized to multiples of it"""
    min_pixels: int
    """its processor's smallest image area (larger of it and ours)"""
    boxes: str
    """the box convention of its tool calls (conventions.CONVENTIONS)"""
    llamafactory_template: str
    system_prompt: str
    """the default system prompt: the CoF instructions with its zoom tool declared"""
    frame_size: Callable[[View], tuple[int, int]]
    """(W, H) of `images[0]` for a trajectory's view"""
    make_frame: Callable[[Path, int, int], Image.Image]
    """(image file, R, images.max_pixels) -> the frame it sees at R (eval)"""
    frame: Callable[[FrameSource, Trajectory], Image.Image]
    """`images[0]` of a sample: the frame it sees of a trajectory's view (an RL prompt's image)"""
    crop: Callable[[list[Image.Image], dict], Image.Image]
    """its zoom tool: the conversation's images so far and a call's arguments -> the crop it shows"""
    pictures: Callable[[FrameSource, Trajectory], list[Image.Image]]
    """`images` of a sample: the frame, then one crop per zoom"""
    messages: Callable[[Trajectory, "str | None"], list[dict]] | None = None
    """the sample's messages; none: the export format's own"""
    formats: tuple[str, ...] | None = None
    """the export formats it can be written as; none: all"""
    card: str | None = None
    """its section of the dataset card, a file in `resources/cards/` (`{max_pixels}`, `{cutoff_len}` filled in)"""

    def card_text(self) -> str | None:
        if self.card is None:
            return None
        return (resources.CARDS / self.card).read_text(encoding="utf-8").removesuffix("\n")


# ------------------------------------------------------------------------------------------ qwen2.5-vl


def _run_frame_size(view: View) -> tuple[int, int]:
    return view.width, view.height


def _cof_crop(images: list[Image.Image], arguments: dict) -> Image.Image:
    """The CoF release's tool: always the frame, `images[0]`, in its pixels."""
    return crop_zoom(images[0], arguments["bbox_2d"])


def _cof_pictures(frames: FrameSource, trajectory: Trajectory) -> list[Image.Image]:
    frame = frames.frame(trajectory)
    return [frame, *chain_crops(frame, trajectory)]


# ------------------------------------------------------------------------------------------ qwen3-vl


def qwen3_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(W, H) of a width x height image at R as Qwen3-VL sees it: smart-resized with factor 32 to at most R*R
    pixels, then as its processor resizes that (a frame under its 65536-pixel minimum is enlarged), so the
    processor leaves the frame as it is."""
    h, w = smart_resize(height, width, QWEN3_FACTOR, QWEN3_MIN_PIXELS, resolution * resolution)
    h, w = smart_resize(h, w, QWEN3_FACTOR, QWEN3_MIN_PIXELS, QWEN3_MAX_PIXELS)
    return w, h


def qwen3_frame_size(view: View) -> tuple[int, int]:
    """The frame of a trajectory's view as Qwen3-VL's processor sizes it (`qwen3_size`)."""
    return qwen3_size(view.original_width, view.original_height, view.resolution)


def qwen3_calls(trajectory: Trajectory) -> list[dict]:
    """Each zoom as Qwen3-VL's `image_zoom_in_tool` call: the region the CoF crop showed, in 0-1000 of the frame."""
    width, height = trajectory.view.width, trajectory.view.height
    return [{"bbox_2d": write_box(zoom_region(step.box, width, height), CONVENTIONS["rel1000"], width, height),
             "label": step.label or QWEN3_LABEL, "img_idx": 0} for step in trajectory.chain]


def qwen3_region(bbox_2d, width: int, height: int) -> tuple[float, float, float, float]:
    """The part of a width x height image the tool crops for `bbox_2d` (0-1000): clipped to the image, and
    grown about its centre to 32 px on the short side when smaller (kept as is when growing cannot help)."""
    x1, y1, x2, y2 = CONVENTIONS["rel1000"].to_pixels(bbox_2d, width, height)
    left, top, right, bottom = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    box_w, box_h = right - left, bottom - top
    if min(box_w, box_h) >= QWEN3_TOOL_MIN_SIDE:
        return left, top, right, bottom
    if min(box_w, box_h) <= 0:
        raise InvalidBox(f"box {list(bbox_2d)} is empty inside the {width}x{height} image")
    grow = QWEN3_TOOL_MIN_SIDE / min(box_w, box_h)
    half_w, half_h = math.ceil(box_w * grow * 0.5), math.ceil(box_h * grow * 0.5)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    grown = (max(0, math.floor(cx - half_w)), max(0, math.floor(cy - half_h)),
             min(width, math.ceil(cx + half_w)), min(height, math.ceil(cy + half_h)))
    if grown[2] - grown[0] > QWEN3_TOOL_MIN_SIDE and grown[3] - grown[1] > QWEN3_TOOL_MIN_SIDE:
        return grown
    return left, top, right, bottom


def qwen3_zoom(image: Image.Image, bbox_2d) -> Image.Image:
    """What Qwen3-VL's `image_zoom_in_tool` shows for `bbox_2d` on `image`: the region, smart-resized with
    factor 32 within its pixel bounds, bicubic. InvalidBox for a box it cannot crop."""
    left, top, right, bottom = qwen3_region(bbox_2d, *image.size)
    try:
        new_w, new_h = smart_resize(right - left, bottom - top, QWEN3_FACTOR, QWEN3_TOOL_MIN_PIXELS,
                                    QWEN3_TOOL_MAX_PIXELS)  # (width, height) in, (width, height) out: symmetric
    except ValueError as exc:
        raise InvalidBox(f"box {list(bbox_2d)} is too thin to zoom ({exc})") from None
    return image.crop((left, top, right, bottom)).resize((new_w, new_h), Image.BICUBIC).convert("RGB")


def _qwen3_crop(images: list[Image.Image], arguments: dict) -> Image.Image:
    index = arguments.get("img_idx", 0)
    if isinstance(index, bool) or not isinstance(index, (int, float)) or index != int(index) \
            or not 0 <= index < len(images):
        raise InvalidBox(f"img_idx {index!r} names none of the {len(images)} image(s) so far")
    return qwen3_zoom(images[int(index)], arguments["bbox_2d"])


def qwen3_make_frame(path: Path, resolution: int, max_pixels: int) -> Image.Image:
    """The frame of an image file at R as Qwen3-VL's processor sizes it, decoded straight at (about) that size."""
    size = qwen3_size(*image_size(path, max_pixels), resolution)
    image = load_image(path, max_pixels, target_size=size)
    return image if image.size == size else image.resize(size, Image.LANCZOS)


def _qwen3_frame(frames: FrameSource, trajectory: Trajectory) -> Image.Image:
    """The frame made from the original at Qwen3-VL's size (after the run's frame is proven, so the original is
    the one the chain was made on)."""
    frames.frame(trajectory)
    try:
        return qwen3_make_frame(frames.images_root / trajectory.task.image, trajectory.view.resolution,
                                frames.max_pixels)
    except ImageError as exc:
        raise ReplayError(str(exc)) from None


def _qwen3_pictures(frames: FrameSource, trajectory: Trajectory) -> list[Image.Image]:
    """The Qwen3-VL frame (`_qwen3_frame`) and the tool's crop of each call."""
    frame = _qwen3_frame(frames, trajectory)
    try:
        return [frame, *(qwen3_zoom(frame, call["bbox_2d"]) for call in qwen3_calls(trajectory))]
    except InvalidBox as exc:
        raise ReplayError(f"a zoom cannot be cropped by the Qwen3-VL tool: {exc}") from None


QWEN3_SYSTEM_PROMPT = (resources.prompts("cof") / "system_qwen3_vl.txt").read_text(encoding="utf-8").removesuffix("\n")


def qwen3_messages(trajectory: Trajectory, system_prompt: str | None) -> list[dict]:
    """The CoF conversation with Qwen3-VL's tool calls; boxes the thoughts mention are rewritten in 0-1000."""
    view = trajectory.view

    def relative(text: str) -> str:
        return _BOX_TEXT.sub(lambda m: str(write_box(tuple(int(v) for v in m.groups()), CONVENTIONS["rel1000"],
                                                     view.width, view.height)), text)

    turns = [cof_format.call_turn(relative(step.thought), cof_format.call_text(call))
             for step, call in zip(trajectory.chain, qwen3_calls(trajectory))]
    return cof_format.conversation(trajectory.task.question, trajectory.task.options, turns,
                                   relative(trajectory.final_thought), cof_format.answer_for(trajectory),
                                   system_prompt or QWEN3_SYSTEM_PROMPT)


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("qwen2.5-vl", "Qwen2.5-VL", factor=28, min_pixels=MIN_PIXELS, boxes="pixels",
           llamafactory_template="qwen2_vl", system_prompt=cof_format.SYSTEM_PROMPT,
           frame_size=_run_frame_size, make_frame=make_frame, frame=FrameSource.frame, crop=_cof_crop,
           pictures=_cof_pictures),
    Target("qwen3-vl", "Qwen3-VL", factor=QWEN3_FACTOR, min_pixels=QWEN3_MIN_PIXELS, boxes="rel1000",
           llamafactory_template="qwen3_vl", system_prompt=QWEN3_SYSTEM_PROMPT,
           frame_size=qwen3_frame_size, make_frame=qwen3_make_frame, frame=_qwen3_frame, crop=_qwen3_crop,
           pictures=_qwen3_pictures, messages=qwen3_messages,
           formats=("sharegpt", "qwen", "parquet", "swift", "verl", "swift-grpo"), card="target-qwen3-vl.md"),
)}
DEFAULT_TARGET = "qwen2.5-vl"
MODEL_TYPES = {"qwen2_5_vl": "qwen2.5-vl", "qwen3_vl": "qwen3-vl", "qwen3_vl_moe": "qwen3-vl"}
"""transformers `model_type` of a checkpoint -> the target it is a student of"""


def student_target(model: str) -> Target:
    """The target a model is trained and evaluated as: by the `model_type` of a local folder's config.json, else
    by its name (`Qwen/Qwen3-VL-8B-Instruct`); the default target when neither tells."""
    config = Path(model) / "config.json"
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    return TARGETS[MODEL_TYPES.get(model_type) or by_family(model, {name: name for name in TARGETS}, DEFAULT_TARGET)]
