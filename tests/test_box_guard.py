"""Any box a model emits, on any frame, becomes an observation or a crop and never an exception that ends a
search or an episode (imaging.checked_box, the one guard before the crop function): property-based tests over
random boxes and frame sizes for every crop path (planner zoom, VLM reader, locator, eval under both protocols)."""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from mmcof_gen import cof_format, cof_release, resources
from mmcof_gen.agent.vlm_search import Roles, VlmSearchAgent
from mmcof_gen.config import AgentConfig
from mmcof_gen.evaluate import EvalSettings, run_episode
from mmcof_gen.imaging import InvalidBox, checked_box, crop_zoom, image_sha256
from mmcof_gen.models.chat import Completion
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Task, View

PROMPTS = Prompts(resources.prompts("agent"))
THIN = ([10, 0, 11, 504], 672, 504)  # issue 23: a thin but valid box killed the whole search


@st.composite
def frames(draw) -> tuple[int, int]:
    """Frame sizes a working frame can have: sides of 28 px and more, aspect ratio within Qwen's 200."""
    width = draw(st.integers(28, 1400))
    height = draw(st.integers(max(28, width // 50), min(1400, width * 50)))
    return width, height


def boxes(width: int, height: int):
    """Boxes as models emit them: in or out of frame, swapped, degenerate, one pixel thin, fractional."""
    x, y = st.integers(-20, width + 20), st.integers(-20, height + 20)
    fx, fy = (st.floats(-20, side + 20, allow_nan=False) for side in (width, height))
    thin = st.tuples(st.integers(0, width - 1), st.integers(0, height - 1)).map(
        lambda p: [p[0], 0, p[0] + 1, height] if p[0] % 2 else [0, p[1], width, p[1] + 1])
    return st.one_of(st.tuples(x, y, x, y).map(list), st.tuples(fx, fy, fx, fy).map(list), thin)


frame_and_box = frames().flatmap(lambda size: st.tuples(st.just(size), boxes(*size)))


class ByRole:
    """An in-process chat model: answers each request by the reply schema it names; records what it was sent."""

    name = "scripted"

    def __init__(self, replies: dict[str, list[str]]):
        self.replies = {title: list(texts) for title, texts in replies.items()}
        self.sent: list[tuple[str, int]] = []  # (schema title, images in the request)

    async def complete(self, messages, *, max_tokens=512, temperature=0.0, json_schema=None) -> Completion:
        title = json_schema["title"] if json_schema else "tool"
        self.sent.append((title, sum(len(m.images) for m in messages)))
        queue = self.replies[title]
        return Completion(model=self.name, text=queue.pop(0) if len(queue) > 1 else queue[0], prompt_tokens=1,
                          completion_tokens=1)

    async def aclose(self) -> None:
        pass


def search(size: tuple[int, int], planner: list[dict], located: list = ()):
    """One search on a blank frame of `size` whose planner plays `planner`, then runs out of steps."""
    width, height = size
    frame = Image.new("RGB", size, "white")
    view = View(resolution=448, width=width, height=height, original_width=width, original_height=height,
                frame_sha256=image_sha256(frame))
    task = Task(id="t", image="x.png", image_sha256="0" * 64, question="What colour is the sign?", answer="red",
                source="questions", question_type="attribute")
    model = ByRole({"ReaderReply": ['{"answer": "blue"}'], "Targets": ['{"missing": ["the sign"]}'],
                    "PlannerAction": [json.dumps(p) for p in planner],
                    "LocateReply": [json.dumps({"boxes": list(located)})]})
    roles = Roles(planner=model, reader=model, locator=model)
    config = AgentConfig(kind="vlm", max_steps=len(planner))
    return asyncio.run(VlmSearchAgent(roles, PROMPTS, config).run(task, frame, view)), frame


def guarded(box, width: int, height: int) -> bool:
    try:
        checked_box(box, width, height)
    except InvalidBox:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_and_box)
@example(((THIN[1], THIN[2]), THIN[0]))
def test_a_planner_zoom_and_a_vlm_read_of_any_box_are_an_observation_or_a_crop(case):
    size, box = case
    result, frame = search(size, [{"thought": "closer", "action": "zoom", "box": box},
                                  {"thought": "read it", "action": "read", "box": box}])
    assert result.reason == "budget: 2 planner steps without a verified answer"
    zoom, read = result.steps[-2:]
    if guarded(box, *size):
        assert zoom.observation.startswith("the zoomed view of") and zoom.box == read.box
        crop_zoom(frame, zoom.box)
    else:
        assert zoom.observation.startswith("invalid box: ") and read.observation.startswith("invalid box: ")
        assert zoom.box is None and read.box is None
        assert [call.role for call in read.calls] == ["planner"]  # the reader was never asked


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_and_box)
@example(((THIN[1], THIN[2]), THIN[0]))
def test_a_located_box_is_a_candidate_only_when_it_can_be_cropped(case):
    size, box = case
    result, frame = search(size, [{"thought": "find", "action": "locate", "phrase": "the sign"}], located=[box])
    locate = result.steps[-1]
    if guarded(box, *size):
        assert [d.box for d in locate.detections] == [checked_box(box, *size)]
        crop_zoom(frame, locate.detections[0].box)
    else:
        assert locate.detections == [] and locate.observation.startswith("ignored: box ")


def test_the_thin_box_of_issue_23_is_refused_with_the_reason():
    box, width, height = THIN
    result, _ = search((width, height), [{"thought": "closer", "action": "zoom", "box": box}])
    assert result.steps[-1].observation == (
        "invalid box: box [10, 0, 11, 504] zooms to a 2x504 region, too thin to show "
        "(absolute aspect ratio must be smaller than 200, got 252.0)")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame_and_box, st.sampled_from(["mmcof", "cof-release"]))
@example(((THIN[1], THIN[2]), THIN[0]), "mmcof")
@example(((THIN[1], THIN[2]), THIN[0]), "cof-release")
def test_an_eval_zoom_on_any_box_is_a_crop_or_a_told_error_under_both_protocols(case, protocol):
    size, box = case
    frame = Image.new("RGB", size, "white")
    reply = "<think> closer </think>\n<tool_call>\n" + json.dumps(
        {"name": cof_format.TOOL_NAME, "arguments": {"bbox_2d": box}}) + "\n</tool_call>"
    model = ByRole({"tool": [reply, "<think> done </think>\n<answer> red </answer>"]})
    episode = asyncio.run(run_episode(model, frame, "What colour is the sign?", None,
                                      EvalSettings(protocol=protocol)))
    assert episode.answer == "red" and episode.stop == "answer"
    assert [images for _, images in model.sent] == [1, 2 if protocol == "cof-release" or episode.zooms else 1]
    if protocol == "mmcof":
        assert episode.zooms == ([checked_box(box, *size)] if guarded(box, *size) else [])
        assert len(episode.bad_calls) == (0 if episode.zooms else 1)


@settings(max_examples=100, deadline=None)
@given(frame_and_box)
def test_the_release_zoom_never_raises(case):
    size, box = case
    frame = Image.new("RGB", size, "white")
    image, cropped, problem = cof_release.zoom(frame, cof_format.tool_call([0, 0, 1, 1]).replace(
        "[0, 0, 1, 1]", json.dumps(box)))
    assert isinstance(image, Image.Image) and (cropped is None) == (problem is not None)
