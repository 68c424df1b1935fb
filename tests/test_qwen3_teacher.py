"""A Qwen3-VL teacher (boxes in 0-1000) against the VLM search agent, over real HTTP: its chains store the same
frame-pixel boxes as a pixel-speaking teacher's, and read under the wrong convention it is never accepted."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from PIL import Image

from mmcof_gen import resources
from mmcof_gen.agent.vlm_search import Roles, VlmSearchAgent
from mmcof_gen.config import AgentConfig, load_config
from mmcof_gen.conventions import CONVENTIONS, write_box
from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import frame_from_image, image_sha256
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Task, View
from tests.support.scripted_server import Reply, ScriptedServer
from tests.support.sign_model import action, picture, sent_images

PROMPTS = Prompts(resources.prompts("agent"))
SIGN = (300, 200, 340, 230)       # the red sign in the 448x336 picture
AROUND = (260, 170, 380, 260)     # a coarser box around it


def red_share(image: Image.Image) -> float:
    """The share of the image that is the sign's red: what the stand-in reader can see."""
    pixels = np.asarray(image, dtype=np.int16)
    return float((np.abs(pixels - (220, 20, 20)).max(axis=2) <= 3).mean())


def teacher(boxes: str, size: tuple[int, int]):
    """A stand-in VLM that writes the sign's boxes in convention `boxes` of a frame of `size`: locate, zoom
    around the sign, then read the sign (again and again); it reads red only from a crop mostly showing red."""
    convention = CONVENTIONS[boxes]
    scale = size[0] / 448, size[1] / 336

    def said(box) -> list:
        frame_box = (box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1])
        return [round(v) for v in convention.from_pixels(frame_box, *size)]

    plan = [action(thought="Find the sign.", action="locate", phrase="the small sign"),
            action(thought="Look closer.", action="zoom", box=said(AROUND))]

    def answer(body: dict) -> Reply:
        name = body["response_format"]["json_schema"]["name"]
        if name == "ReaderReply":
            return Reply(json.dumps({"answer": "red" if red_share(sent_images(body)[0]) > 0.1 else "blue"}))
        if name == "Targets":
            return Reply('{"missing": ["the small sign"]}')
        if name == "LocateReply":
            return Reply(json.dumps({"boxes": [said(SIGN)]}))
        return plan.pop(0) if plan else action(thought="Read the sign.", action="read", box=said(SIGN))
    return answer


def search(server: ScriptedServer, boxes: str, scale: int = 1):
    """One search of the sign picture (upscaled `scale` times) at R=448*scale, the roles reading `boxes`."""
    original = picture().resize((448 * scale, 336 * scale), Image.NEAREST)
    frame = frame_from_image(original, 448 * scale)
    view = View(resolution=448 * scale, width=frame.width, height=frame.height, original_width=original.width,
                original_height=original.height, frame_sha256=image_sha256(frame))
    task = Task(id="t", image="sign.png", image_sha256="0" * 64, question="What colour is the small sign?",
                answer="red", source="questions", question_type="attribute")
    model = chat_model(ChatModelConfig(base_url=server.url, model="scripted-model", backoff_seconds=0.01,
                                       max_retries=0, timeout=5))
    roles = Roles(planner=model, reader=model, locator=model, boxes={"planner": boxes, "locator": boxes})
    config = AgentConfig(kind="vlm", max_steps=6)
    return asyncio.run(VlmSearchAgent(roles, PROMPTS, config).run(task, frame, view)), view


def test_a_teacher_in_thousandths_stores_the_boxes_a_pixel_teacher_stores():
    with ScriptedServer(teacher("pixels", (448, 336))) as server:
        by_pixels, _ = search(server, "pixels")
    with ScriptedServer(teacher("rel1000", (448, 336))) as server:
        by_thousandths, view = search(server, "rel1000")
        planner = next(r for r in server.requests if r["response_format"]["json_schema"]["name"] == "PlannerAction")
        locator = next(r for r in server.requests if r["response_format"]["json_schema"]["name"] == "LocateReply")
    assert by_pixels.accepted and by_thousandths.accepted
    assert [step.box for step in by_pixels.chain] == [AROUND, SIGN]
    for ours, theirs in zip(by_thousandths.chain, by_pixels.chain, strict=True):
        assert max(abs(a - b) for a, b in zip(ours.box, theirs.box)) <= 1
    assert "relative coordinates from 0 to 1000" in planner["messages"][1]["content"][-1]["text"]  # its instructions
    assert "relative coordinates from 0 to 1000" in json.dumps(locator["messages"])
    # the planner is told boxes back in its own convention
    located = by_thousandths.steps[2].observation
    assert str(write_box(by_thousandths.steps[2].detections[0].box, CONVENTIONS["rel1000"], *(view.width,
                                                                                             view.height))) in located


@pytest.mark.parametrize("scale", [1, 4])
def test_a_teacher_in_thousandths_read_as_pixels_is_never_accepted(scale):
    """At 448x336 its boxes fall outside the frame (an observation, not a crash); at 4x they fit the frame
    and crop the wrong place, which the reader cannot read the answer from."""
    with ScriptedServer(teacher("rel1000", (448 * scale, 336 * scale))) as server:
        result, _ = search(server, "pixels", scale)
    assert not result.accepted and result.chain == []
    assert result.reason == "budget: 6 planner steps without a verified answer"
    observations = " ".join(step.observation for step in result.steps)
    assert ("outside the 448x336 image" in observations) == (scale == 1)


def test_box_convention_per_role_defaults_by_family_and_refuses_unknown_values(tmp_path):
    config = load_config("vllm-qwen3-vl")
    assert config.models.planner.model == "Qwen/Qwen3-VL-8B-Instruct"
    assert Roles.build(config.models).boxes == {"planner": "rel1000", "locator": "rel1000"}
    assert load_config("vllm-qwen2.5-vl").models.planner.box_convention.name == "pixels"
    path = tmp_path / "p.yaml"
    path.write_text("agent: {kind: vlm}\nmodels: {planner: {model: Qwen/Qwen3-VL-2B-Thinking}, "
                    "locator: {model: Qwen/Qwen2.5-VL-3B-Instruct}}\n")
    assert Roles.build(load_config(path).models).boxes == {"planner": "rel1000", "locator": "pixels"}
    path.write_text("agent: {kind: vlm}\nmodels: {planner: {model: m, boxes: rel100}}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (f"{path}: models.planner.boxes: Value error, unknown box convention 'rel100'; "
                                  "use one of pixels, rel1000, rel1")


def test_a_task_writer_in_thousandths_proposes_the_boxes_a_pixel_writer_proposes(tmp_path, monkeypatch):
    """Task synthesis' proposer (models.task_writer, here the planner) reads its boxes in its convention too."""
    from mmcof_gen.imaging import file_sha256, load_image, make_frame
    from mmcof_gen.tasks.base import task_prompts
    from mmcof_gen.tasks.vlm_writer import TaskWriter
    from tests import test_task_synthesis as pixels
    from tests.support.runs import write_noise_image

    rel = CONVENTIONS["rel1000"]
    thousandths = [{"objects": [{"name": o["name"], "box": [round(v) for v in rel.from_pixels(o["box"], 308, 224)]}
                                for o in reply["objects"]]} for reply in pixels.PROPOSALS]
    monkeypatch.setattr(pixels, "PROPOSALS", thousandths)
    path = write_noise_image(tmp_path / "images" / "street.png", pixels.SIZE, 0)
    with ScriptedServer(pixels.script()) as server:
        pipeline = pixels.config(server)
        pipeline.models.planner.boxes = "rel1000"
        model = chat_model(pipeline.models.planner)
        writer = TaskWriter(model, model, None, task_prompts(pipeline), Prompts(pipeline.prompts_dir), pipeline)
        made = asyncio.run(writer.synthesize(load_image(path, 10**9), make_frame(path, 448, 10**9), pixels.SIZE,
                                             "street.png", file_sha256(path)))
        proposal_prompt = pixels.prompt_of(server.requests[0])
    assert "relative coordinates from 0 to 1000" in proposal_prompt
    assert [t.question for t in made.tasks] == [pixels.SIGN_Q, pixels.MUG_Q]
    for task, expected in zip(made.tasks, [(200, 77, 240, 116), (80, 637, 120, 686)]):
        assert max(abs(a - b) for a, b in zip(task.gt_boxes[0], expected)) <= 2
    assert made.rejected[0].reason.startswith("proposer: box [974, 45, 1039, 134] is outside the rel1000 range")
