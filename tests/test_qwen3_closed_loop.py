"""The closed loop with a Qwen3-VL student: `export --target qwen3-vl` -> `mmcof-gen finetune` of a tiny Qwen3-VL
trained from scratch -> eval's own request path for that model (its tool declared, frames at factor 32). As in
tests/test_closed_loop.py, it guards the agreement of export, label masking and eval's prompt, not accuracy.
Run alone with `pytest -m closed_loop`."""

from __future__ import annotations

import asyncio
import json

import pytest
import torch

from mmcof_gen.evaluate import EvalSettings, check_image_tokens, first_messages, model_target
from mmcof_gen.targets import qwen3_make_frame
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.scenes import generate_scenes
from mmcof_gen.tasks.vstar import BenchItem
from tests.support.runs import MAX_PIXELS, write_run
from tests.support.tiny_models import build_tiny_qwen3vl
from tests.test_closed_loop import RESOLUTIONS, STEPS, chains, main_exit, well_formed

pytestmark = pytest.mark.closed_loop


def test_a_qwen3_model_trained_on_its_export_answers_eval_in_the_exported_form(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        images = tmp_path / "images"
        generate_scenes(images, count=2, seed=0)
        scenes = json.loads((images / "scenes.json").read_text())
        trajectories = chains(images, scenes)
        run = write_run(tmp_path / "run", images, trajectories)
        assert main_exit(["export", str(run), "--format", "sharegpt", "--target", "qwen3-vl",
                          "--out", str(tmp_path / "export")]) == 0
        assert main_exit(["validate", str(tmp_path / "export")]) == 0
        samples = json.loads((tmp_path / "export" / "mmcof.json").read_text())
        assert any('"img_idx": 0' in m["content"] for s in samples for m in s["messages"])
        corpus = [message["content"] for sample in samples for message in sample["messages"]]
        base = build_tiny_qwen3vl(tmp_path / "tiny", corpus=corpus * 4, vocab_size=1200, max_pixels=448 * 448)

        out = tmp_path / "finetuned"
        assert main_exit(["finetune", "--data", str(tmp_path / "export"), "--model", str(base), "--out", str(out),
                          "--full", "--max-steps", str(STEPS), "--batch-size", "2", "--grad-accum", "1",
                          "--lr", "3e-3", "--image-max-pixels", str(448 * 448), "--image-min-pixels", str(32 * 32),
                          "--save-steps", str(10 * STEPS)]) == 0
        losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
        assert losses[-1] * 5 <= losses[0], losses

        model = chat_model(ChatModelConfig(backend="transformers", model=str(out / "model"), device="cpu"))
        target = model_target(model)
        assert target.name == "qwen3-vl"
        item = BenchItem(id="x", image=images / scenes["scenes"][0]["file"], question="", options=None, answer=None,
                         category="all")
        asyncio.run(check_image_tokens(model, item, EvalSettings(resolutions=list(RESOLUTIONS))))
        first, formed = {}, []
        for trajectory in trajectories:
            frame = qwen3_make_frame(images / trajectory.task.image, trajectory.view.resolution, MAX_PIXELS)
            messages = first_messages(frame, trajectory.task.question, None, "cof",
                                      system_prompt=target.system_prompt)
            reply = asyncio.run(model.complete(messages, max_tokens=160)).text  # its calls are longer than 2.5's
            formed.append(well_formed(reply))
            first[(trajectory.task.image, trajectory.task.question, trajectory.view.resolution)] = reply
        assert sum(formed) >= 0.7 * len(formed), list(first.values())
        pairs = [(first[(image, question, RESOLUTIONS[0])], first[(image, question, RESOLUTIONS[-1])])
                 for image, question, resolution in first if resolution == RESOLUTIONS[0]]
        assert any(small != large for small, large in pairs), pairs
    finally:
        torch.set_num_threads(threads)
