"""End to end on real images with the offline default (RapidOCR): direct and zoom chains, re-execution,
hostile files (resume after SIGKILL: tests/reliability/test_kill_resume.py)."""

import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from mmcof_gen.answers import verify_answer
from mmcof_gen.config import load_config
from mmcof_gen.imaging import crop_to_frame, crop_zoom, image_sha256, make_frame, zoom_region
from mmcof_gen.models.ocr import OcrEngine
from mmcof_gen.positions import cell_box, cell_named
from mmcof_gen.scenes import generate_scenes
from mmcof_gen.stats import NO_TEXT, run_stats
from mmcof_gen.store import RunStore
from mmcof_gen.synthesize import RunInputs, synthesize
from tests.support.runs import write_noise_image

CLI = [sys.executable, "-m", "mmcof_gen.cli"]


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    generate_scenes(folder, count=1, seed=0)
    return folder


@pytest.fixture(scope="module")
def scene_run(scene_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    synthesize(load_config(), scene_dir, out)
    return out


def test_scene_yields_direct_samples_at_large_r_and_zoom_chains_at_small_r(scene_run):
    trajectories = list(RunStore(scene_run).trajectories())
    accepted = [t for t in trajectories if t.status == "accepted"]
    kinds = Counter((t.view.resolution, t.needs_zoom) for t in accepted)
    assert any(zoom for (_, zoom) in kinds), kinds
    assert any(not zoom for (_, zoom) in kinds), kinds
    smallest, largest = min(t.view.resolution for t in trajectories), max(t.view.resolution for t in trajectories)
    assert kinds[(smallest, True)] > 0 and kinds[(largest, False)] > 0
    for t in trajectories:
        assert t.status == "accepted" or t.reason, t.id
        assert len(t.chain) <= 3


def test_every_accepted_zoom_chain_re_executes_and_reads_the_answer(scene_run, scene_dir):
    engine = OcrEngine()
    zooms = [t for t in RunStore(scene_run).trajectories() if t.status == "accepted" and t.needs_zoom]
    assert zooms
    for t in zooms:
        frame = make_frame(scene_dir / t.task.image, t.view.resolution, 250_000_000)
        assert image_sha256(frame) == t.view.frame_sha256
        crops = [crop_zoom(frame, step.box) for step in t.chain]
        last, box = crops[-1], t.chain[-1].box
        region = zoom_region(box, *frame.size)
        readings = [h.text for h in engine.read(last)
                    if _overlaps(crop_to_frame(h.box, last.size, region), box)]
        assert any(verify_answer(r, t.task.answer).correct for r in readings), (t.id, readings, t.task.answer)


def _overlaps(a, b) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def test_ids_are_deterministic_and_a_rerun_adds_nothing(scene_run, scene_dir):
    before = (scene_run / "trajectories.jsonl").read_bytes()
    stats = synthesize(load_config(), scene_dir, scene_run)
    assert (scene_run / "trajectories.jsonl").read_bytes() == before
    ids = [t.id for t in RunStore(scene_run).trajectories()]
    assert len(ids) == len(set(ids)) == stats["accepted"] + stats["rejected"]
    manifest = json.loads((scene_run / "manifest.json").read_text())
    assert manifest["counts"]["accepted"] == stats["accepted"]
    assert manifest["versions"]["rapidocr-onnxruntime"] != "not installed"
    assert set(manifest["prompts"]) >= {"tasks/question_text", "think_answer"}


def _text_image(size, text="EXIT 42B", mode="RGB") -> Image.Image:
    image = Image.new("RGB", size, (120, 140, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, size[1] - 120, 360, size[1] - 50), fill=(255, 255, 255))
    draw.text((52, size[1] - 112), text, fill=(0, 0, 0), font=ImageFont.load_default(size=44))
    return image


def test_hostile_folder_finishes_with_bad_files_recorded_and_no_good_image_lost(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    (images / "notes.jpg").write_text("just text, not an image")
    rgba = _text_image((900, 700)).convert("RGBA")
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.save(images / "alpha.png")
    _text_image((900, 700), "GATE 7").convert("CMYK").save(images / "cmyk.jpg")
    gray16 = Image.fromarray((np.asarray(_text_image((800, 600)).convert("L"), dtype=np.uint16) * 257))
    gray16.save(images / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    _text_image((900, 700), "CAFE 9").save(images / "rotated.jpg", exif=exif)
    big = io.BytesIO()
    Image.new("RGB", (12000, 9000), (90, 100, 110)).save(big, "JPEG", quality=60)
    (images / "huge.jpg").write_bytes(big.getvalue())
    truncated = io.BytesIO()
    _text_image((900, 700)).save(truncated, "JPEG")
    (images / "truncated.jpg").write_bytes(truncated.getvalue()[: len(truncated.getvalue()) // 2])

    out = tmp_path / "run"
    config = load_config()
    config.resolutions = [448, 1024]
    synthesize(config, images, out)
    store = RunStore(out)
    errors = {e.image: e.reason for e in store.errors()}
    assert set(errors) == {"corrupt.jpg", "empty.png", "notes.jpg", "truncated.jpg"}
    assert all(reason for reason in errors.values())
    good = {i.image for i in store.image_tasks()}
    assert good == {"alpha.png", "cmyk.jpg", "gray16.png", "rotated.jpg", "huge.jpg"}
    sizes = {i.image: (i.width, i.height) for i in store.image_tasks()}
    assert sizes["rotated.jpg"] == (700, 900) and sizes["huge.jpg"] == (12000, 9000)


@pytest.fixture(scope="module")
def small_text_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("small")
    for index, text in enumerate(["GATE 7", "CAFE 9", "EXIT 42B"]):
        _text_image((900, 700), text).save(folder / f"img{index}.png")
    return folder


def test_limit_processes_only_the_first_images(small_text_images, tmp_path):
    result = subprocess.run([*CLI, "synthesize", "--images", str(small_text_images), "--out", str(tmp_path / "run"),
                             "--resolutions", "448", "--limit", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert sorted(i.image for i in RunStore(tmp_path / "run").image_tasks()) == ["img0.png", "img1.png"]


def test_two_workers_make_the_same_records_as_one(small_text_images, tmp_path):
    def records(workers: int) -> dict:
        config = load_config()
        config.resolutions = [448, 672]
        config.executor.workers = workers
        out = tmp_path / f"run{workers}"
        synthesize(config, small_text_images, out)
        return {t.id: (t.status, t.answer, [c.box for c in t.chain]) for t in RunStore(out).trajectories()}

    one, two = records(1), records(2)
    assert one == two and len(one) > 0


def test_an_image_smaller_than_two_budgets_is_searched_once_at_the_smaller(small_text_images, tmp_path):
    config = load_config()
    config.resolutions = [1024, 1920]  # a 900x700 image: the same frame at both
    synthesize(config, small_text_images, tmp_path / "run", RunInputs(limit=1))
    trajectories = list(RunStore(tmp_path / "run").trajectories())
    assert trajectories and {t.view.resolution for t in trajectories} == {1024}


def _claims_hold(t, acuity: int) -> list[str]:
    """Every claim a thought of `t` makes, checked against its own steps; the claims that fail."""
    W, H = t.view.width, t.view.height
    region = cell_box(cell_named(t.task.position), W, H)
    reads = [s for s in t.steps if s.action == "read"]
    zooms = [s for s in t.steps if s.action == "zoom"]

    def seen(read):  # (box in frame pixels, reading, magnification) of each line a read step found
        if read.box is None:
            return [(d.box, d.label, 1.0) for d in read.detections]
        zoom = next(z for z in zooms if z.box == read.box)
        size = tuple(int(v) for v in zoom.observation.split()[1].split("x"))
        region = zoom_region(read.box, W, H)
        return [(crop_to_frame(d.box, size, region), d.label, size[0] / (region[2] - region[0]))
                for d in read.detections]

    failures = []
    thoughts = [step.thought for step in t.chain] + [t.final_thought]
    for thought in thoughts:
        if m := POSITIONED.search(thought):
            assert m.group(1) == t.task.position, thought
        if m := re.search(r"There it is (\d+) px tall in this frame, tall enough to read \((\d+) px", thought):
            height = int(m.group(1))
            ok = int(m.group(2)) == acuity <= height and any(
                d.box[3] - d.box[1] == height and _centre(d.box, region) and verify_answer(d.label, t.task.answer).correct
                for d in reads[0].detections)
        elif "I find no text in the" in thought:
            ok = not any(_centre(d.box, region) for d in reads[0].detections)
        elif m := re.search(r"is (\d+) px tall in this frame and does not read clearly", thought):
            ok = any(_centre(d.box, region) and d.box[3] - d.box[1] == int(m.group(1)) for d in reads[0].detections)
        elif m := re.search(r"a text line at \[(\d+), (\d+), (\d+), (\d+)\] in the .* only (\d+) px tall in this frame, "
                            r"too small to read \(I need about (\d+) px", thought):
            box, height = tuple(int(v) for v in m.groups()[:4]), int(m.group(5))
            ok = (int(m.group(6)) == acuity and height == box[3] - box[1] < acuity
                  and any(d.box == box for d in reads[0].detections))
        elif m := re.search(r"zoomed region shows a text line at \[(\d+), (\d+), (\d+), (\d+)\], (\d+) px tall in the "
                            r"zoomed view, still too small", thought):
            box, height = tuple(int(v) for v in m.groups()[:4]), int(m.group(5))
            ok = height < acuity and any(b == box and int((b[3] - b[1]) * k) == height
                                         for r in reads[1:] for b, _, k in seen(r))
        elif m := re.search(r"In the zoomed view the text is (\d+) px tall and readable: it says \"(.*)\"", thought):
            height = int(m.group(1))
            ok = m.group(2) == t.answer and height >= acuity and any(
                int((b[3] - b[1]) * k) == height and verify_answer(label, t.answer).correct
                for b, label, k in seen(reads[-1]))
        else:
            ok = False  # a thought this check does not know makes claims nobody checked
        if not ok:
            failures.append(thought)
    return failures


POSITIONED = re.compile(r"in the (\w+(?: \w+)?) part of the image")  # where a thought says the text is


def _centre(box, region) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region[0] <= cx < region[2] and region[1] <= cy < region[3]


def test_every_thought_of_every_accepted_sample_is_true_of_its_own_steps(scene_run):
    accepted = [t for t in RunStore(scene_run).trajectories() if t.status == "accepted"]
    assert any(t.chain for t in accepted) and any(not t.chain for t in accepted)
    acuity = load_config().ocr.min_read_height
    assert {t.id: _claims_hold(t, acuity) for t in accepted} == {t.id: [] for t in accepted}


def test_images_that_give_no_task_are_counted_with_the_reason(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "plain.png", (640, 480), seed=5)
    result = subprocess.run([*CLI, "synthesize", "--images", str(images), "--out", str(tmp_path / "run"),
                             "--resolutions", "448"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr  # nothing was made (docs/cli-contract.md)
    assert result.stderr.strip().splitlines()[-1] == "mmcof-gen: synthesize: no image gave a task (why: the line above); nothing was made"
    assert result.stdout.splitlines()[-1] == (
        "1 image(s) gave no task: no small legible text: the default pipeline asks about text; "
        "for objects use tasks.kind vlm (1)")
    stats = run_stats(RunStore(tmp_path / "run"))
    assert (stats["images"], stats["tasks"]) == (1, 0)
    assert stats["images_without_tasks"] == {NO_TEXT: 1} and stats["tasks_dropped"] == {}
