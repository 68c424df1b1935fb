"""Box conventions: how a model writes a box, and the conversions to and from the run's own box.

The run folder stores every box once, as integer pixels of the working frame it was seen in, together with
that frame (`schema.View`: its size, R and the original image's size), so every stored box is also a box in
original-image pixels (`to_original`). Models speak differently (docs/format.md, "Box conventions"):
Qwen2.5-VL writes absolute pixels of the image it was shown, Qwen3-VL relative thousandths (0-1000), Mini-o3's
tool fractions of 1. Conversions happen only at the edges: reading a model's reply (`read_box`), writing an
export, scoring an eval. A choice of convention is looked up in `CONVENTIONS`; the default of a model role
comes from its model's name (`FAMILIES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mmcof_gen.imaging import InvalidBox, _numbers, _shown, checked_box

Values = tuple[float, float, float, float]


@dataclass(frozen=True)
class BoxConvention:
    """`[x1, y1, x2, y2]` as a model writes it: pixels of the image it was shown (`full` None), or each side
    of that image mapped to `full` (1000: Qwen3-VL's thousandths; 1: fractions)."""

    name: str
    full: float | None
    wording: str
    """how a prompt states the convention, a `str.format` template with `{width}` and `{height}`"""

    def to_pixels(self, values, width: int, height: int) -> Values:
        """`values` in this convention as (unrounded) pixels of a width x height image."""
        x1, y1, x2, y2 = _numbers(values)
        if self.full is None:
            return x1, y1, x2, y2
        sx, sy = width / self.full, height / self.full
        return x1 * sx, y1 * sy, x2 * sx, y2 * sy

    def from_pixels(self, box, width: int, height: int) -> Values:
        """Pixels of a width x height image in this convention (unrounded)."""
        x1, y1, x2, y2 = _numbers(box)
        if self.full is None:
            return x1, y1, x2, y2
        sx, sy = self.full / width, self.full / height
        return x1 * sx, y1 * sy, x2 * sx, y2 * sy

    def describe(self, width: int, height: int) -> str:
        """The sentence a prompt states the convention in, for a width x height image."""
        return self.wording.format(width=width, height=height)


CONVENTIONS: dict[str, BoxConvention] = {c.name: c for c in (
    BoxConvention("pixels", None, "[x1, y1, x2, y2] in integer pixels of the {width}x{height} image, with "
                                  "0 <= x1 < x2 <= {width} and 0 <= y1 < y2 <= {height}"),
    BoxConvention("rel1000", 1000, "[x1, y1, x2, y2] in relative coordinates from 0 to 1000 (x / width * 1000, "
                                   "y / height * 1000, integers) of the image, whatever its size, with "
                                   "0 <= x1 < x2 <= 1000 and 0 <= y1 < y2 <= 1000"),
    BoxConvention("rel1", 1, "[x1, y1, x2, y2] as fractions from 0 to 1 of the image's width and height, "
                             "with 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1"),
)}
DEFAULT = "pixels"

FAMILIES: dict[str, str] = {
    "qwen3-vl": "rel1000",    # QwenLM/Qwen3-VL cookbooks/2d_grounding.ipynb; Qwen-Agent image_zoom_in_qwen3vl.py
    "qwen2.5-vl": "pixels",   # absolute pixels of the resized frame (QwenLM/Qwen3-VL issues #676, #940)
}
"""A substring of a model's name (lower case, `_` read as `-`) -> the convention its family is trained on."""


def convention(name: str) -> BoxConvention:
    """The registered convention `name`; ValueError naming the known ones."""
    if name not in CONVENTIONS:
        raise ValueError(f"unknown box convention {name!r}; use one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name]


def family_default(model: str) -> str:
    """The convention of a model by its name (`Qwen/Qwen3-VL-8B-Instruct` -> rel1000); pixels if unknown."""
    return by_family(model, FAMILIES, DEFAULT)


def by_family(model: str, families: dict[str, str], default: str) -> str:
    """The value of the first family whose name is in the model's name (lower case, `_` read as `-`)."""
    key = model.lower().replace("_", "-")
    return next((value for family, value in families.items() if family in key), default)


def read_box(values, boxes: BoxConvention, width: int, height: int):
    """A box a model wrote in `boxes` about a width x height image, as integer pixels of that image that a zoom
    can show: the one guard (imaging.checked_box) after the one conversion, before any crop.

    InvalidBox (its message is shown to the model) for a box that is malformed or outside the convention's
    range: a Qwen3-VL reply [120, 40, 980, 700] read as pixels of a 448x336 frame is refused, never clipped.
    """
    numbers = _numbers(values)
    if boxes.full is not None:
        x1, y1, x2, y2 = numbers
        if x2 <= x1 or y2 <= y1:
            raise InvalidBox(f"box {_shown(values)} has {'x2 <= x1' if x2 <= x1 else 'y2 <= y1'}")
        slack = boxes.full * 1e-9  # float noise of a conversion (837 / 837 * 1000 = 1000.0000000000001) is in range
        if min(numbers) < -slack or max(numbers) > boxes.full + slack:
            raise InvalidBox(f"box {_shown(values)} is outside the {boxes.name} range "
                             f"(x and y must be within 0..{boxes.full:g})")
    try:
        return checked_box(boxes.to_pixels(numbers, width, height), width, height)
    except InvalidBox as exc:
        if boxes.full is None:
            raise
        raise InvalidBox(f"box {_shown(values)} ({boxes.name}) is empty at pixel resolution ({exc})") from None


def write_box(box, boxes: BoxConvention, width: int, height: int) -> list:
    """Pixels of a width x height image as a model of `boxes` writes them: integers for pixels and
    thousandths (rounded outward, so the region still covers the box), 4 decimals for fractions."""
    values = boxes.from_pixels(box, width, height)
    if boxes.full == 1:
        return [round(v, 4) for v in values]
    x1, y1, x2, y2 = values
    eps = 1e-9  # float noise must not push an outward-rounded edge one unit further
    return [math.floor(x1 + eps), math.floor(y1 + eps), math.ceil(x2 - eps), math.ceil(y2 - eps)]


def to_original(box, width: int, height: int, original_width: int, original_height: int) -> Values:
    """A box in pixels of a width x height frame as (unrounded) pixels of the original image it was made from."""
    x1, y1, x2, y2 = _numbers(box)
    sx, sy = original_width / width, original_height / height
    return x1 * sx, y1 * sy, x2 * sx, y2 * sy


def from_original(box, width: int, height: int, original_width: int, original_height: int) -> Values:
    """Original-image pixels as (unrounded) pixels of a width x height frame made from that image."""
    return to_original(box, original_width, original_height, width, height)
