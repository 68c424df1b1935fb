"""The closed loop, for each student target: export (`--target`) -> `mmcof-gen finetune` -> eval's own request
path, on a tiny model of that family trained from scratch (for Qwen3-VL: its tool declared, frames at factor 32). It guards the agreement of the export format, finetune's label masking and eval's prompt, not
accuracy: a model that learned the exported chains must answer eval's first request in their form, and its
first reply must depend on the resolution (the frame's size reaches it).

The data are the demo scenes (`mmcof_gen.scenes`): for each sign, a chain built from the scene's ground truth
(a zoom on the sign at R=224, and at R=448 for the small signs; a direct answer otherwise), exported with
`mmcof-gen export --format sharegpt --target <student>`. Run alone with `pytest -m closed_loop`."""

from __future__ import annotations

import asyncio
import json

import pytest

from mmcof_gen import cof_format
from mmcof_gen.cli import main
from mmcof_gen.eval_protocols import first_messages
from mmcof_gen.evaluate import EvalSettings, check_image_tokens, model_target
from mmcof_gen.imaging import make_frame, scale_box
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.scenes import generate_scenes
from mmcof_gen.tasks.vstar import BenchItem
from tests.support.runs import MAX_PIXELS, make_trajectory, write_run
from tests.support.tiny_models import build_tiny_qwen3vl, build_tiny_qwen25vl

pytestmark = [pytest.mark.closed_loop, pytest.mark.usefixtures("one_thread")]

RESOLUTIONS = (224, 448)
STEPS = 150
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "centre", "right")
STUDENTS = {  # target -> (tiny model builder, its processor's smallest image side, reply tokens: a call's length)
    "qwen2.5-vl": (build_tiny_qwen25vl, 56, 64),
    "qwen3-vl": (build_tiny_qwen3vl, 32, 160),
}


def chains(images, scenes):
    """One trajectory per sign and R: (trajectory, question) in frame pixels."""
    made = []
    for scene in scenes["scenes"]:
        for sign in scene["signs"]:
            row, column = sign["cell"]
            question = f"What does the sign in the {ROWS[row]} {COLUMNS[column]} part of the image say?"
            for resolution in RESOLUTIONS:
                frame = make_frame(images / scene["file"], resolution, MAX_PIXELS)
                sx, sy = frame.width / scene["width"], frame.height / scene["height"]
                zoom = resolution == RESOLUTIONS[0] or sign["tier"] == "small"
                boxes = [scale_box(sign["box"], sx, sy)] if zoom else []
                trajectory = make_trajectory(images, scene["file"], resolution, boxes=boxes, question=question,
                                             answer=sign["text"], thoughts=[f"The sign is at the {ROWS[row]}."])
                made.append(trajectory.model_copy(update={"final_thought": f"The sign reads {sign['text']}."}))
    return made


def well_formed(reply: str) -> bool:
    """`<think>...</think>`, then one tool call eval can parse (JSON, the tool's name, a bbox_2d) or an `<answer>`.

    Whether the box is right is accuracy, which this test does not ask of a 150-step model."""
    if not reply.startswith("<think>") or "</think>" not in reply:
        return False
    if reply.count("<tool_call>") == 1:
        try:
            return cof_format.parse_tool_call(reply) is not None
        except ValueError:
            return False
    return "<tool_call>" not in reply and cof_format.extract_answer(reply) is not None


@pytest.mark.parametrize("student", STUDENTS)
def test_a_model_trained_on_the_export_answers_eval_in_the_exported_form(tmp_path, student):
    build, min_side, max_tokens = STUDENTS[student]
    images = tmp_path / "images"
    generate_scenes(images, count=2, seed=0)
    scenes = json.loads((images / "scenes.json").read_text())
    trajectories = chains(images, scenes)
    run = write_run(tmp_path / "run", images, trajectories)
    export = tmp_path / "export"
    assert main_exit(["export", str(run), "--format", "sharegpt", "--target", student, "--out", str(export)]) == 0
    assert main_exit(["validate", str(export)]) == 0  # each exported call re-crops to its exported crop
    samples = json.loads((export / "mmcof.json").read_text())
    corpus = [message["content"] for sample in samples for message in sample["messages"]]
    base = build(tmp_path / "tiny", corpus=corpus * 4, vocab_size=1200, max_pixels=448 * 448)

    out = tmp_path / "finetuned"
    assert main_exit(["finetune", "--data", str(export), "--model", str(base), "--out", str(out), "--full",
                      "--max-steps", str(STEPS), "--batch-size", "2", "--grad-accum", "1", "--lr", "3e-3",
                      "--image-max-pixels", str(448 * 448), "--image-min-pixels", str(min_side * min_side),
                      "--save-steps", str(10 * STEPS)]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert losses[-1] * 5 <= losses[0], losses

    model = chat_model(ChatModelConfig(backend="transformers", model=str(out / "model"), device="cpu"))
    target = model_target(model)
    assert target.name == student
    item = BenchItem(id="x", image=images / scenes["scenes"][0]["file"], question="", options=None, answer=None,
                     category="all")
    asyncio.run(check_image_tokens(model, item, EvalSettings(resolutions=list(RESOLUTIONS))))  # frames reach it whole
    first, formed = {}, []
    for trajectory in trajectories:
        frame = target.make_frame(images / trajectory.task.image, trajectory.view.resolution, MAX_PIXELS)
        messages = first_messages(frame, trajectory.task.question, None, "cof", system_prompt=target.system_prompt)
        reply = asyncio.run(model.complete(messages, max_tokens=max_tokens)).text
        formed.append(well_formed(reply))
        first[(trajectory.task.image, trajectory.task.question, trajectory.view.resolution)] = reply
    assert sum(formed) >= 0.7 * len(formed), list(first.values())
    pairs = [(first[(image, question, RESOLUTIONS[0])], first[(image, question, RESOLUTIONS[-1])])
             for image, question, resolution in first if resolution == RESOLUTIONS[0]]
    assert any(small != large for small, large in pairs), pairs


def main_exit(argv) -> int:
    import sys

    old = sys.argv
    sys.argv = ["mmcof-gen", *argv]
    try:
        main()
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = old
    return 0
