"""SIGKILL at seeded random points, then the same command again: synthesize, filter and export lose
nothing, repeat nothing, and leave no torn line or half-written file behind."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mmcof_gen.config import DEFAULT_CONFIG
from tests.support.faults import (CLI, assert_run_whole, decisions, jsonl_lines, sign_reader_vlm,
                                      vlm_config_yaml)
from tests.support.scripted_server import ScriptedServer

SEED = 20250515


def record_count(out: Path) -> int:
    """Complete JSON lines written so far under `out`."""
    return sum(path.read_bytes().count(b"\n") for path in out.glob("*.jsonl")) if out.exists() else 0


def assert_no_duplicates_so_far(out: Path) -> bool:
    """After a kill: every whole line parses and each id is there once; returns whether a torn tail was left."""
    torn = False
    ids = []
    for path in out.glob("*.jsonl"):
        data = path.read_bytes()
        torn |= bool(data) and not data.endswith(b"\n")
        ids += [json.loads(line)["id"] for line in data.split(b"\n")[:-1]]
    assert len(ids) == len(set(ids))
    return torn


def kill_then_resume(command: list[str], out: Path, rng: random.Random, kills: int, total: int) -> dict:
    """Start `command` and SIGKILL it once `out` holds a seeded random number of records (plus a random
    few milliseconds), `kills` times in a row; then run it to the end. Returns what happened."""
    tally = {"kills": 0, "torn": 0}
    for threshold in sorted(rng.sample(range(total), kills)):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while process.poll() is None and record_count(out) < threshold:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.03))
        process.send_signal(signal.SIGKILL)
        tally["kills"] += process.wait() == -signal.SIGKILL
        if out.exists():
            tally["torn"] += assert_no_duplicates_so_far(out)
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    return tally


@pytest.fixture(scope="module")
def vlm_server():
    with ScriptedServer(sign_reader_vlm) as server:
        yield server


@pytest.fixture(scope="module")
def reference(sign_inputs, vlm_server, tmp_path_factory) -> tuple[list[str], Path]:
    """The synthesize command (VLM agent, R 448 and 672) and its uninterrupted run."""
    images, questions = sign_inputs
    folder = tmp_path_factory.mktemp("reference")
    config = vlm_config_yaml(folder / "vlm.yaml", vlm_server.url, resolutions=[448, 672])
    command = [*CLI, "synthesize", "--images", str(images), "--questions", str(questions), "--config", str(config)]
    done = subprocess.run([*command, "--out", str(folder / "run")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return command, folder / "run"


def test_twenty_sigkills_of_synthesize_then_resume_give_every_task_exactly_once(reference, tmp_path):
    command, reference_run = reference
    expected = decisions(reference_run)
    assert {status for status, _, _ in expected.values()} == {"accepted", "rejected", "error"}
    total = record_count(reference_run)
    rng = random.Random(SEED)
    kills = torn = 0
    for sequence, workers in enumerate([1, 1, 2, 2]):  # 4 runs, each killed 5 times; two with 2 worker threads
        out = tmp_path / f"run{sequence}"
        tally = kill_then_resume([*command, "--out", str(out), "--workers", str(workers)], out, rng, 5, total)
        kills, torn = kills + tally["kills"], torn + tally["torn"]
        assert_run_whole(out)
        assert decisions(out) == expected
    print(f"synthesize: 20 trials, {kills} killed mid-run, {torn} torn tails repaired")
    assert kills >= 10  # most seeded points fall inside the run (the rest: the process had already finished)


def test_sigkills_of_a_ray_run_then_resume_give_every_task_exactly_once(reference, tmp_path):
    """The driver killed: its Ray and actors go with it, their shards may hold torn tails; the resume (again on
    Ray) repairs them and makes the uninterrupted run's decisions."""
    command, reference_run = reference
    out = tmp_path / "run"
    ray_command = [*command, "--out", str(out), "--executor", "ray", "--workers", "2"]
    tally = kill_then_resume(ray_command, out, random.Random(SEED + 1), 3, record_count(reference_run))
    assert_run_whole(out)
    assert decisions(out) == decisions(reference_run)
    assert list(out.glob("trajectories-w*.jsonl"))
    print(f"ray: 3 trials, {tally['kills']} killed mid-run, {tally['torn']} torn tails repaired")


def test_run_killed_while_writing_its_first_manifest_resumes(reference, tmp_path):
    command, reference_run = reference
    out = tmp_path / "run"
    out.mkdir()
    (out / ".manifest.json.4242.tmp").write_text('{"tool": "mmc')  # killed between mkdir and the first rename
    done = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert decisions(out) == decisions(reference_run)
    assert not list(out.glob(".*.tmp"))


def text_image(path: Path, text: str) -> None:
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (900, 700), (120, 140, 160))
    draw = ImageDraw.Draw(image)
    draw.rectangle((40, 580, 360, 650), fill=(255, 255, 255))
    draw.text((52, 588), text, fill=(0, 0, 0), font=ImageFont.load_default(size=44))
    image.save(path)


def test_sigkills_of_the_offline_default_then_resume_give_every_task_exactly_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index, text in enumerate(["GATE 7", "CAFE 9"]):
        text_image(images / f"text{index}.png", text)
    command = [*CLI, "synthesize", "--images", str(images), "--config", str(DEFAULT_CONFIG), "--resolutions", "448"]
    reference_run = tmp_path / "reference"
    assert subprocess.run([*command, "--out", str(reference_run)], capture_output=True, timeout=300).returncode == 0
    out = tmp_path / "run"
    tally = kill_then_resume([*command, "--out", str(out)], out, random.Random(SEED), 3, record_count(reference_run))
    assert_run_whole(out)
    assert decisions(out) == decisions(reference_run) and len(decisions(out)) >= 2
    print(f"offline default: 3 trials, {tally['kills']} killed mid-run")


def output_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def timed_run(command: list[str], out: Path, marker: str) -> tuple[float, float]:
    """Run `command` to the end; (seconds until it marked `out` as its own and began writing, seconds in all)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None and not (out / marker).exists():
        time.sleep(0.002)
    marked = time.monotonic() - start
    assert process.wait(timeout=120) == 0
    return marked, time.monotonic() - start


def kill_at(command: list[str], seconds: float) -> bool:
    """Start `command`, SIGKILL it after `seconds`; True if it was still running."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    return process.wait() == -signal.SIGKILL


@pytest.mark.parametrize("command, marker", [
    (["filter", "--config", str(DEFAULT_CONFIG)], ".mmcof-filter"),
    (["export", "--format", "sharegpt"], ".mmcof-export"),
    (["export", "--format", "parquet"], ".mmcof-export"),
], ids=["filter", "export-sharegpt", "export-parquet"])
def test_sigkill_of_filter_or_export_then_rerun_equals_an_uninterrupted_run_byte_for_byte(reference, tmp_path,
                                                                                          command, marker):
    _, run = reference
    out = tmp_path / "out"
    whole = [*CLI, command[0], str(run), "--out", str(out), *command[1:]]
    marked, total = timed_run(whole, out, marker)
    uninterrupted = output_files(out)
    shutil.rmtree(out)  # the same --out again: reports name their output folder

    rng = random.Random(f"{SEED}-{command}")
    kills = sum(kill_at(whole, rng.uniform(marked, total)) for _ in range(4))  # while it writes its files
    (out / f".{sorted(uninterrupted)[-1]}.99999.tmp").write_bytes(b"half a file")  # as a kill mid-write leaves it
    done = subprocess.run(whole, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rerun = output_files(out)
    assert sorted(rerun) == sorted(uninterrupted)  # no temporary or half-written file left behind
    for name, data in uninterrupted.items():
        if name == "export_report.json":  # a re-run writes only the images the interrupted one did not
            first, second = json.loads(data), json.loads(rerun[name])
            assert {**first, "images_written": None} == {**second, "images_written": None}
        elif name == "manifest.json":  # the filter block says when it was made
            first, second = json.loads(data), json.loads(rerun[name])
            first["filter"].pop("created"), second["filter"].pop("created")
            assert first == second
        else:
            assert rerun[name] == data, name
    jsonl_lines(out)
    print(f"{' '.join(command[:1] + command[2:])}: 4 trials, {kills} killed while writing")
