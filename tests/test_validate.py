import json
import subprocess
import sys

import pytest
from PIL import Image

from mmcof_gen.export import export
from mmcof_gen.imaging import crop_zoom
from tests.support.runs import make_trajectory, write_noise_image, write_run
from mmcof_gen.validate import validate


@pytest.fixture
def exported(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    trajectories = [make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150), (50, 40, 120, 90)]),
                    make_trajectory(images, "a.png", 448, question="What is on the door?")]
    export(write_run(tmp_path / "run", images, trajectories), "sharegpt", tmp_path / "out")
    return tmp_path / "out"


def failures(report):
    return {name: [(e["id"], e["reason"]) for e in row["examples"]] for name, row in report["checks"].items()
            if row["failed"]}


def test_our_export_passes_every_check(exported):
    report = validate(exported)
    assert report["ok"] and report["samples"] == 2 and failures(report) == {}
    assert report["checks"]["recrop"]["checked"] == 2  # every tool call of the two-zoom sample


def test_a_crop_that_does_not_show_its_box_is_found(exported):
    sample = json.loads((exported / "mmcof.json").read_text())[0]
    frame = Image.open(exported / sample["images"][0]).convert("RGB")
    crop_zoom(frame, (12, 10, 202, 150)).save(exported / sample["images"][1])  # the box moved by 2 px

    report = validate(exported)

    assert not report["ok"]
    row = report["checks"]["recrop"]
    assert (row["checked"], row["failed"], row["rate"]) == (2, 1, 0.5)
    assert row["examples"][0]["id"] == sample["id"]
    assert row["examples"][0]["reason"].startswith("pixels differ (mean absolute difference ")


def test_jpeg_stored_crops_pass_only_within_a_tolerance(exported, tmp_path):
    samples = json.loads((exported / "mmcof.json").read_text())
    for sample in samples:
        for index, path in enumerate(sample["images"][1:], 1):
            jpeg = f"{path}.jpg"
            Image.open(exported / path).save(exported / jpeg, quality=95)
            sample["images"][index] = jpeg
    data = tmp_path / "jpeg.json"
    data.write_text(json.dumps(samples))

    assert validate(data, image_root=exported)["checks"]["recrop"]["failed"] == 2
    assert validate(data, image_root=exported, tolerance=20)["ok"]  # noise is JPEG's worst case (about 18)


def test_someone_elses_conversations_dataset_gets_a_reason_per_check(tmp_path):
    write_noise_image(tmp_path / "frame.png", (280, 196), seed=5)  # sides multiples of 28
    write_noise_image(tmp_path / "odd.png", (300, 200), seed=6)
    call = '<think> look </think>\n<tool_call>\n{"name": "%s", "arguments": {"bbox_2d": [%s]}}\n</tool_call>'
    data = [
        {"id": "outside", "image": ["frame.png", "frame.png"], "conversations": [
            {"from": "human", "value": "<image> Q?"}, {"from": "gpt", "value": call % ("image_zoom_in_tool", "200, 100, 300, 150")},
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "<answer> A </answer>"}]},
        {"id": "extra-image", "image": ["frame.png", "frame.png"], "conversations": [
            {"from": "human", "value": "<image> Q?"}, {"from": "gpt", "value": "<answer> A </answer>"}]},
        {"id": "ends-with-user", "image": "frame.png", "conversations": [
            {"from": "human", "value": "<image> Q?"}, {"from": "gpt", "value": "<answer> A </answer>"},
            {"from": "human", "value": "more?"}]},
        {"id": "resized", "image": "odd.png", "conversations": [
            {"from": "human", "value": "<image> Q?"}, {"from": "gpt", "value": "<answer> A </answer>"}]},
        {"id": "missing", "image": "nowhere.png", "conversations": [
            {"from": "human", "value": "<image> Q?"}, {"from": "gpt", "value": "<answer> A </answer>"}]},
        ["not", "a", "sample"],
        {"id": "bad-call", "image": ["frame.png", "frame.png"], "conversations": [
            {"from": "human", "value": "<image> Q?"}, {"from": "gpt", "value": call % ("zoom", "0, 0, 50, 50")},
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "<answer> A </answer>"}]},
    ]
    path = tmp_path / "theirs.json"
    path.write_text(json.dumps(data))

    report = validate(path)
    problems = failures(report)

    assert problems["boxes"] == [("outside", "zoom 1: box [200, 100, 300, 150] is outside the 280x196 image "
                                             "(x must be within 0..280, y within 0..196)"),
                                 ("extra-image", "0 zooms for 1 crops"),
                                 ("bad-call", 'a tool call must be {"name": "image_zoom_in_tool", "arguments": '
                                              '{"bbox_2d": [x1, y1, x2, y2]}}')]
    assert problems["placeholders"] == [("extra-image", "1 <image> placeholders for 2 images")]
    assert problems["turn_order"] == [("ends-with-user", "turns ['user', 'assistant', 'user'] must start with user "
                                                         "and end with assistant"),
                                      ("theirs.json#5", "turns [] must start with user and end with assistant")]
    assert problems["frame_size"] == [("resized", "images[0] is 300x200; a Qwen2.5-VL processor at max_pixels "
                                                  "14745600 resizes it to 308x196, which moves every box")]
    assert problems["images"][0][0] == "missing" and "nowhere.png" in problems["images"][0][1]
    assert set(problems) == {"boxes", "placeholders", "turn_order", "frame_size", "images"}


def test_token_budget_fails_samples_over_cutoff_len(exported):
    report = validate(exported, cutoff_len=1000)  # the two-zoom sample is about 1370 tokens, the direct one 780
    row = report["checks"]["token_budget"]
    assert row["failed"] == 1 and row["examples"][0]["reason"].endswith("tokens > cutoff_len 1000")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mmcof_gen.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_validate_command_exits_1_when_a_check_fails_and_writes_the_report(exported, tmp_path):
    passed = run_cli("validate", exported, "--report", tmp_path / "ok.json")
    assert passed.returncode == 0, passed.stderr
    assert json.loads((tmp_path / "ok.json").read_text())["ok"] is True
    sample = json.loads((exported / "mmcof.json").read_text())[0]
    Image.open(exported / sample["images"][2]).transpose(Image.FLIP_LEFT_RIGHT).save(exported / sample["images"][2])
    failed = run_cli("validate", exported)
    assert failed.returncode == 1 and "CHECKS FAILED" in failed.stdout
