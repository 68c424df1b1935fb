"""Box conventions (mmcof_gen/conventions.py): exact conversions, round trips, range checks, family defaults."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mmcof_gen.conventions import (CONVENTIONS, family_default, from_original, read_box, to_original, write_box)
from mmcof_gen.imaging import InvalidBox, checked_box

sizes = st.integers(min_value=28, max_value=4000)


@st.composite
def boxes_in(draw, width_height=st.tuples(sizes, sizes)):
    """(width, height, an integer pixel box inside that image)."""
    width, height = draw(width_height)
    x1 = draw(st.integers(0, width - 1))
    y1 = draw(st.integers(0, height - 1))
    return width, height, (x1, y1, draw(st.integers(x1 + 1, width)), draw(st.integers(y1 + 1, height)))


def test_qwen3_reply_in_thousandths_is_the_pixel_box_of_the_frame():
    rel = CONVENTIONS["rel1000"]
    assert read_box([500, 250, 750, 1000], rel, 448, 336) == (224, 84, 336, 336)
    assert read_box([0.5, 0.25, 0.75, 1.0], CONVENTIONS["rel1"], 448, 336) == (224, 84, 336, 336)
    assert read_box([224, 84, 336, 336], CONVENTIONS["pixels"], 448, 336) == (224, 84, 336, 336)
    assert write_box((224, 84, 336, 336), rel, 448, 336) == [500, 250, 750, 1000]


def test_out_of_range_reply_is_refused_with_the_convention_range():
    with pytest.raises(InvalidBox, match=r"outside the rel1000 range \(x and y must be within 0..1000\)"):
        read_box([10, 10, 1200, 500], CONVENTIONS["rel1000"], 4000, 3000)
    with pytest.raises(InvalidBox, match="outside the 448x336 image"):  # a 0-1000 reply read as pixels
        read_box([120, 40, 980, 700], CONVENTIONS["pixels"], 448, 336)
    with pytest.raises(InvalidBox, match=r"outside the rel1 range"):
        read_box([0.1, 0.1, 2, 0.5], CONVENTIONS["rel1"], 448, 336)
    with pytest.raises(InvalidBox, match=r"box \[800, 10, 700, 20\] has x2 <= x1"):
        read_box([800, 10, 700, 20], CONVENTIONS["rel1000"], 448, 336)
    with pytest.raises(InvalidBox, match="empty at pixel resolution"):
        read_box([500, 500, 500.1, 600], CONVENTIONS["rel1000"], 448, 336)


def test_family_defaults_follow_the_model_name():
    assert family_default("Qwen/Qwen3-VL-8B-Instruct") == "rel1000"
    assert family_default("qwen3_vl_235b_a22b_thinking") == "rel1000"
    assert family_default("Qwen/Qwen2.5-VL-7B-Instruct") == "pixels"
    assert family_default("scripted-model") == "pixels"


@given(boxes_in(), st.sampled_from(sorted(CONVENTIONS)))
def test_every_convention_round_trips_a_pixel_box(case, name):
    width, height, box = case
    boxes = CONVENTIONS[name]
    try:
        checked_box(box, width, height)
    except InvalidBox:
        assume(False)  # read_box ends in the box guard: a box no zoom can show is refused in every convention
    assert read_box(boxes.from_pixels(box, width, height), boxes, width, height) == box


@given(boxes_in())
def test_written_thousandths_cover_the_box_within_one_thousandth(case):
    width, height, box = case
    rel = CONVENTIONS["rel1000"]
    written = write_box(box, rel, width, height)
    assert all(isinstance(v, int) and 0 <= v <= 1000 for v in written)
    x1, y1, x2, y2 = rel.to_pixels(written, width, height)
    assert x1 <= box[0] + 1e-6 and y1 <= box[1] + 1e-6 and x2 >= box[2] - 1e-6 and y2 >= box[3] - 1e-6
    assert box[0] - x1 < width / 1000 + 1e-6 and x2 - box[2] < width / 1000 + 1e-6


@given(boxes_in(), st.tuples(sizes, sizes))
def test_frame_and_original_pixels_round_trip(case, original):
    width, height, box = case
    there = to_original(box, width, height, *original)
    back = from_original(there, width, height, *original)
    assert back == pytest.approx(box, abs=1e-6)


@given(boxes_in(), st.tuples(sizes, sizes))
def test_relative_boxes_do_not_move_when_the_image_is_resized(case, other):
    """Why Qwen3-VL's thousandths survive its processor's resizing: the same relative box on any size."""
    width, height, box = case
    rel = CONVENTIONS["rel1000"]
    values = rel.from_pixels(box, width, height)
    resized = rel.to_pixels(values, *other)
    assert rel.from_pixels(resized, *other) == pytest.approx(values, abs=1e-6)
