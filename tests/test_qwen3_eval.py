"""eval of a Qwen3-VL model over real HTTP: its own tool declared, frames at factor 32, its 0-1000 tool calls read
in that convention and executed with its tool's crop rule; an out-of-range call is an observation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmcof_gen import cof_format
from mmcof_gen.evaluate import EvalSettings, evaluate
from mmcof_gen.targets import QWEN3_SYSTEM_PROMPT, qwen3_make_frame, qwen3_zoom
from mmcof_gen.tasks.vstar import load_bench
from tests.support.scripted_server import Reply, ScriptedServer
from tests.test_eval import MAX_PIXELS, images_of, openai_model, write_vstar


def qwen3_turn(thought: str, bbox: list[int]) -> str:
    return cof_format.call_turn(thought, cof_format.call_text({"bbox_2d": bbox, "label": "glove", "img_idx": 0}))


def test_a_qwen3_model_is_evaluated_with_its_own_tool_and_crops(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar", questions=True))[0]
    frame = qwen3_make_frame(glove.image, 448, MAX_PIXELS)
    first = [500, 400, 800, 700]
    script = [Reply(qwen3_turn("find the glove", [500, 400, 1200, 700])),  # out of range: an observation
              Reply(qwen3_turn("find the glove", first)),
              Reply(cof_format.answer_turn("it is blue", glove.answer_letter))]
    with ScriptedServer(script) as server:
        evaluate(openai_model(server, model="Qwen/Qwen3-VL-8B-Instruct"), [glove], EvalSettings(resolutions=[448]),
                 tmp_path / "out")
    requests = server.requests
    last = requests[-1]["messages"]
    assert last[0]["content"] == QWEN3_SYSTEM_PROMPT
    assert "outside the rel1000 range" in last[3]["content"]
    sent = images_of(requests[-1])
    assert sent[0].size == frame.size and sent[0].width % 32 == sent[0].height % 32 == 0
    assert sent[0].tobytes() == frame.tobytes()
    assert sent[1].tobytes() == qwen3_zoom(frame, first).tobytes()
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert record["correct"] and record["frame_size"] == list(frame.size)
    width, height = frame.size
    assert record["zooms"] == [[round(500 * width / 1000), round(400 * height / 1000), round(800 * width / 1000),
                                round(700 * height / 1000)]]
    assert len(record["bad_calls"]) == 1 and "rel1000" in record["bad_calls"][0]


def test_eval_target_reads_a_fine_tune_its_name_does_not_tell_in_the_qwen3_convention(tmp_path):
    """A served fine-tune named `my-finetune` is a Qwen2.5-VL student by default; `target="qwen3-vl"` evaluates it
    with Qwen3-VL's tool prompt, factor-32 frames and 0-1000 calls, and the fingerprint names the target."""
    glove = load_bench(write_vstar(tmp_path / "vstar", questions=True))[0]
    frame = qwen3_make_frame(glove.image, 448, MAX_PIXELS)
    call = [500, 400, 800, 700]
    reports = {}
    for target in (None, "qwen3-vl"):
        script = [Reply(qwen3_turn("find the glove", call)), Reply(cof_format.answer_turn("blue", glove.answer_letter))]
        with ScriptedServer(script) as server:
            reports[target] = evaluate(openai_model(server, model="my-finetune"), [glove],
                                       EvalSettings(resolutions=[448], target=target), tmp_path / f"out-{target}")
        system = server.requests[0]["messages"][0]["content"]
        record = json.loads((tmp_path / f"out-{target}" / "results.jsonl").read_text())
        if target is None:
            assert system == cof_format.SYSTEM_PROMPT  # and the call read as pixels of a ~448x336 frame: refused
            assert record["zooms"] == [] and "outside" in record["bad_calls"][0]
        else:
            width, height = frame.size
            assert system == QWEN3_SYSTEM_PROMPT and record["frame_size"] == list(frame.size)
            assert record["zooms"] == [[round(500 * width / 1000), round(400 * height / 1000),
                                        round(800 * width / 1000), round(700 * height / 1000)]]
            assert images_of(server.requests[-1])[1].tobytes() == qwen3_zoom(frame, call).tobytes()
    assert (reports[None]["target"], reports["qwen3-vl"]["target"]) == ("qwen2.5-vl", "qwen3-vl")


def test_eval_target_flag_is_checked_and_passed_to_the_loop(tmp_path):
    """`eval --target qwen3-vl` on the command line: the requests carry Qwen3-VL's tool prompt and report.json names
    the target; an unknown target, or a Qwen3-VL target under the release protocol, is one line and exit 2."""
    root = write_vstar(tmp_path / "vstar", questions=True)
    cli = [sys.executable, "-m", "mmcof_gen.cli", "eval", "--bench", str(root), "--resolutions", "448", "--limit", "1"]
    with ScriptedServer(lambda body: Reply("<answer> A </answer>")) as server:
        done = subprocess.run([*cli, "--out", str(tmp_path / "out"), "--endpoint", server.url, "--served-model",
                               "my-finetune", "--target", "qwen3-vl"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert server.requests[-1]["messages"][0]["content"] == QWEN3_SYSTEM_PROMPT
    assert json.loads((tmp_path / "out" / "report.json").read_text())["target"] == "qwen3-vl"
    unknown = subprocess.run([*cli, "--out", str(tmp_path / "x"), "--endpoint", "http://h/v1", "--served-model", "m",
                              "--target", "qwen4-vl"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    assert "--target" in unknown.stderr and "qwen4-vl" in unknown.stderr and "qwen3-vl" in unknown.stderr
    release = subprocess.run([*cli, "--out", str(tmp_path / "y"), "--endpoint", "http://h/v1", "--served-model", "m",
                              "--protocol", "cof-release", "--target", "qwen3-vl"], capture_output=True, text=True,
                             timeout=120)
    assert (release.returncode, release.stderr.strip()) == (
        2, "mmcof-gen: --protocol cof-release evaluates in the release's qwen2.5-vl convention; drop --target "
           "qwen3-vl or use --protocol mmcof")


def test_eval_settings_refuse_an_unknown_target():
    with pytest.raises(ValueError, match="target\n  Input should be 'qwen2.5-vl' or 'qwen3-vl'"):
        EvalSettings(target="qwen4-vl")
