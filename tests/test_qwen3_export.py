"""Export targets (targets.py): `--target qwen3-vl` sizes
frames as Qwen3-VL's processor does, calls its own image_zoom_in_tool in 0-1000 and shows that tool's crops;
validate re-executes every call with the target's crop rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from mmcof_gen import cof_format
from mmcof_gen.budget import TokenBudget, image_tokens
from mmcof_gen.conventions import CONVENTIONS
from mmcof_gen.errors import ConfigError
from mmcof_gen.export import export
from mmcof_gen.targets import QWEN3_SYSTEM_PROMPT, TARGETS, qwen3_frame_size, qwen3_region, qwen3_zoom
from mmcof_gen.imaging import image_sha256, zoom_region
from mmcof_gen.validate import validate
from tests.support.runs import make_trajectory, write_noise_image, write_run

ZOOMS = [(10, 10, 200, 150), (100, 100, 110, 108)]  # the second zooms to a 15x12 region: the tool grows it to 32 px


@pytest.fixture
def run(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)  # R=448: run frame 532x364, Qwen3-VL frame 544x352
    write_noise_image(images / "b.png", (500, 500), seed=2)
    trajectories = [
        make_trajectory(images, "a.png", 448, boxes=ZOOMS,
                        thoughts=["It appears around [10, 10, 200, 150].", "Closer at [100, 100, 110, 108]."]),
        make_trajectory(images, "a.png", 448, question="What is on the door?"),
        make_trajectory(images, "b.png", 672, boxes=[(100, 100, 200, 200)]),
    ]
    return write_run(tmp_path / "run", images, trajectories), trajectories


def load_images(folder: Path, sample: dict) -> list[Image.Image]:
    return [Image.open(folder / path).convert("RGB") for path in sample["images"]]


def test_qwen3_export_sizes_frames_at_factor_32_and_shows_the_tools_own_crops(tmp_path, run):
    run_dir, trajectories = run
    report = export(run_dir, "sharegpt", tmp_path / "out", target="qwen3-vl")
    samples = json.loads((tmp_path / "out" / "mmcof.json").read_text())
    assert (report["target"], report["samples"], report["zoom"]) == ("qwen3-vl", 3, 2)
    for sample, trajectory in zip(samples, trajectories, strict=True):
        view = trajectory.view
        images = load_images(tmp_path / "out", sample)
        assert images[0].size == qwen3_frame_size(view) and images[0].width % 32 == images[0].height % 32 == 0
        assert sample["messages"][0]["content"] == QWEN3_SYSTEM_PROMPT
        calls = [cof_format.parse_tool_call(m["content"])["arguments"] for m in sample["messages"][2:-1:2]]
        assert len(calls) == len(trajectory.chain) == len(images) - 1
        for call, step, crop in zip(calls, trajectory.chain, images[1:]):
            assert set(call) == {"bbox_2d", "label", "img_idx"} and call["img_idx"] == 0
            assert all(isinstance(v, int) and 0 <= v <= 1000 for v in call["bbox_2d"])
            # the call covers the region the CoF crop showed the reader, to within a thousandth
            x1, y1, x2, y2 = CONVENTIONS["rel1000"].to_pixels(call["bbox_2d"], view.width, view.height)
            region = zoom_region(step.box, view.width, view.height)
            assert x1 <= region[0] < x1 + view.width / 1000 + 1e-6 and y2 >= region[3] > y2 - view.height / 1000 - 1e-6
            assert image_sha256(crop) == image_sha256(qwen3_zoom(images[0], call["bbox_2d"]))
            assert crop.width % 32 == crop.height % 32 == 0 and crop.width * crop.height >= 256 * 32 * 32
    frame = load_images(tmp_path / "out", samples[0])[0]
    assert frame.size == (544, 352)
    tiny = samples[0]["messages"][4]["content"]
    bbox = cof_format.parse_tool_call(tiny)["arguments"]["bbox_2d"]
    left, top, right, bottom = qwen3_region(bbox, *frame.size)
    assert right - left > 32 and bottom - top > 32  # grown about its centre, as the tool does
    assert samples[0]["messages"][2]["content"].startswith("<think> It appears around [18, 27, 376, 413]. </think>")
    assert samples[0]["messages"][4]["content"].startswith("<think> Closer at [187, 274, 207, 297]. </think>")
    budget = TokenBudget(report["token_budget"]["max_pixels"], min_pixels=65536, factor=32)
    assert report["token_budget"]["max_tokens"] == max(
        budget.count(s["messages"], [i.size for i in load_images(tmp_path / "out", s)]) for s in samples)
    assert image_tokens(544, 352, 3840 * 3840, 65536, 32) == 17 * 11
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Student model: qwen3-vl" in card and "template: qwen3_vl" in card


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_target_recrops_its_exported_calls_and_a_tampered_crop_fails(tmp_path, run, target):
    run_dir, _ = run
    out = tmp_path / "out"
    export(run_dir, "sharegpt", out, target=target)
    result = validate(out)  # the target comes from export_report.json
    assert result["target"] == target and result["ok"], result["checks"]
    assert result["checks"]["recrop"]["checked"] == 3 and result["checks"]["frame_size"]["failed"] == 0
    sample = json.loads((out / "mmcof.json").read_text())[0]
    crop_path = out / sample["images"][2]
    crop = Image.open(crop_path).convert("RGB")
    crop.putpixel((0, 0), tuple(255 - v for v in crop.getpixel((0, 0))))
    crop.save(crop_path)
    tampered = validate(out)
    assert not tampered["ok"] and tampered["checks"]["recrop"]["failed"] == 1
    assert tampered["checks"]["recrop"]["examples"][0]["reason"].startswith("pixels differ")


def test_a_qwen3_export_read_as_qwen25_fails_validation(tmp_path, run):
    run_dir, _ = run
    export(run_dir, "sharegpt", tmp_path / "out", target="qwen3-vl")
    wrong = validate(tmp_path / "out", target="qwen2.5-vl")
    assert not wrong["ok"]
    assert wrong["checks"]["frame_size"]["failed"] == 3  # 544x352 is not a factor-28 size
    cli = subprocess.run([sys.executable, "-m", "mmcof_gen.cli", "validate", str(tmp_path / "out"), "--target",
                          "qwen2.5-vl"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 1 and "frame_size (3)" in cli.stderr


def test_v1_form_is_refused_for_qwen3(tmp_path, run):
    run_dir, _ = run
    with pytest.raises(ConfigError, match="--format v1 cannot be written for --target qwen3-vl; use one of "
                                          "sharegpt, qwen, parquet, swift"):
        export(run_dir, "v1", tmp_path / "out", target="qwen3-vl")
