"""The exit-code contract of every command (docs/cli-contract.md): 0 done and made something; 1 ran but made
nothing or a check failed; 2 usage or input error. 1 and 2 end with one line saying why, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runs import make_trajectory, write_noise_image, write_run
from tests.support.scripted_server import Reply, ScriptedServer

CLI = [sys.executable, "-m", "mmcof_gen.cli"]
RESOLUTIONS = "give pixel budgets like 448,672,1024,1920"
NOT_A_RUN = "mmcof-gen: notarun is not a run folder (no manifest.json); pass the --out folder of a synthesize run"
BAD_YAML = "mmcof-gen: bad.yaml is not valid YAML: "


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    """A working folder: images/, a run whose only trajectory is rejected, a folder that is not a run, a file,
    a config that does not parse, an image folder with no image, a one-question bench."""
    root = tmp_path_factory.mktemp("contract")
    images = root / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    write_run(root / "rejected", images, [make_trajectory(images, "a.png", 448, question="Q?", status="rejected",
                                                          correct=False)])
    (root / "notarun").mkdir()
    (root / "file").write_text("x")
    (root / "bad.yaml").write_text("resolutions: [448\n  - x: {")
    (root / "empty").mkdir()
    (root / "textonly").mkdir()
    (root / "textonly" / "readme.txt").write_text("no image here")
    (root / "bench.jsonl").write_text(json.dumps({"image": "images/a.png", "question": "Colour?", "answer": "red"}) + "\n")
    (root / "dataset").mkdir()  # a LLaMA-Factory sharegpt dataset folder, as `export --format sharegpt` writes
    (root / "dataset" / "dataset_info.json").write_text(json.dumps({"mmcof": {"file_name": "mmcof.json",
                                                                              "formatting": "sharegpt"}}))
    (root / "dataset" / "mmcof.json").write_text("[]")
    return root


CASES = [
    # synthesize
    (["synthesize", "--images", "images", "--out", "o", "--resolutions", ""], 2,
     f"mmcof-gen: synthesize: --resolutions '' is empty; {RESOLUTIONS}"),
    (["synthesize", "--images", "images", "--out", "o", "--resolutions", "448,,672"], 2,
     f"mmcof-gen: synthesize: --resolutions '448,,672' has an empty item; {RESOLUTIONS}"),
    (["synthesize", "--images", "images", "--out", "o", "--resolutions", "50"], 2,
     f"mmcof-gen: synthesize: --resolutions '50' has a side length outside 112 to 3840; {RESOLUTIONS}"),
    (["synthesize", "--images", "images", "--out", "o", "--resolutions", "5000"], 2,
     f"mmcof-gen: synthesize: --resolutions '5000' has a side length outside 112 to 3840; {RESOLUTIONS}"),
    (["synthesize", "--images", "images", "--out", "file"], 2,
     "mmcof-gen: --out file is a file, not a folder; pass a new folder for the run"),
    (["synthesize", "--images", "images", "--out", "o", "--config", "bad.yaml"], 2, BAD_YAML),
    (["synthesize", "--images", "nowhere", "--out", "o"], 2,
     "mmcof-gen synthesize: Invalid value for '--images': dir 'nowhere' does not exist. "
     "(see 'mmcof-gen synthesize --help')"),
    (["synthesize", "--images", "empty", "--out", "run-empty"], 1,
     "mmcof-gen: synthesize: no image in empty (searched recursively); nothing was made"),
    (["synthesize", "--images", "textonly", "--out", "run-text"], 1,
     "mmcof-gen: synthesize: no image in textonly (searched recursively); nothing was made"),
    # stats
    (["stats", "nowhere"], 2,
     "mmcof-gen stats: Invalid value for 'run_dir': dir 'nowhere' does not exist. (see 'mmcof-gen stats --help')"),
    (["stats", "notarun"], 2, NOT_A_RUN),
    # filter
    (["filter", "nowhere", "--out", "f"], 2,
     "mmcof-gen filter: Invalid value for 'run_dir': dir 'nowhere' does not exist. (see 'mmcof-gen filter --help')"),
    (["filter", "notarun", "--out", "f"], 2, NOT_A_RUN),
    (["filter", "rejected", "--out", "file"], 2, "mmcof-gen: --out file is a file, not a folder; pass a new or empty folder"),
    (["filter", "rejected", "--out", "f", "--config", "bad.yaml"], 2, BAD_YAML),
    (["filter", "rejected", "--out", "filtered"], 1,
     "mmcof-gen: filter: kept 0 of 1 trajectories; the reasons are in filtered/filter_report.json"),
    # export
    (["export", "nowhere", "--out", "e"], 2,
     "mmcof-gen export: Invalid value for 'run_dir': dir 'nowhere' does not exist. (see 'mmcof-gen export --help')"),
    (["export", "notarun", "--out", "e"], 2, NOT_A_RUN),
    (["export", "rejected", "--out", "file"], 2, "mmcof-gen: --out file is a file, not a folder; pass a new or empty folder"),
    (["export", "rejected", "--out", "e", "--format", "csv"], 2,
     "mmcof-gen export: Invalid value for '--format': Value error, 'csv' is not one of 'sharegpt', 'qwen', 'parquet', "
     "'v1', 'swift', 'verl', 'swift-grpo'. (see 'mmcof-gen export --help')"),
    (["export", "rejected", "--out", "exported"], 1,
     "mmcof-gen: export: no sample was written (0 dropped, 1 not accepted); the reasons are in "
     "exported/export_report.json"),
    # view
    (["view", "nowhere"], 2,
     "mmcof-gen view: Invalid value for 'run_dir': dir 'nowhere' does not exist. (see 'mmcof-gen view --help')"),
    (["view", "notarun"], 2, NOT_A_RUN),
    (["view", "rejected", "--out", "file/report.html"], 2,
     "mmcof-gen: cannot write --out file/report.html: file is a file; pass a writable path"),
    # validate
    (["validate", "nowhere"], 2,
     "mmcof-gen validate: Invalid value for 'path': path 'nowhere' does not exist. (see 'mmcof-gen validate --help')"),
    # eval
    (["eval", "--bench", "bench.jsonl", "--endpoint", "URL", "--served-model", "m", "--resolutions", "50"], 2,
     f"mmcof-gen: eval: --resolutions '50' has a side length outside 112 to 3840; {RESOLUTIONS}"),
    (["eval", "--bench", "bench.jsonl", "--endpoint", "URL", "--served-model", "m", "--resolutions", "448,,672"], 2,
     f"mmcof-gen: eval: --resolutions '448,,672' has an empty item; {RESOLUTIONS}"),
    (["eval", "--bench", "bench.jsonl", "--endpoint", "URL", "--served-model", "m", "--out", "file"], 2,
     "mmcof-gen: --out file is a file, not a folder; pass a new folder for the results"),
    (["eval", "--bench", "bench.jsonl", "--endpoint", "URL", "--served-model", "m", "--out", "evaluated",
      "--resolutions", "448"], 1, "mmcof-gen: eval: every episode failed; the reasons are in evaluated/results.jsonl"),
    # finetune (a missing [hf] extra: tests/test_cli.py::test_a_missing_extra_is_one_line_naming_it_and_exit_2)
    (["finetune", "--out", "ft"], 2,
     "mmcof-gen: finetune: pass --data EXPORT_DIR (a folder written by `mmcof-gen export --format sharegpt`)"),
    (["finetune", "--data", "notarun", "--out", "ft"], 2,
     "mmcof-gen: --data notarun: no dataset_info.json; pass a folder written by `mmcof-gen export --format "
     "sharegpt` (or any LLaMA-Factory sharegpt dataset folder)"),
    (["finetune", "--data", "dataset", "--out", "file"], 2,
     "mmcof-gen: --out file is a file, not a folder; pass a new folder for the fine-tune"),
    (["finetune", "--data", "dataset", "--out", "ft", "--resume"], 2,
     "mmcof-gen: --resume: ft holds no checkpoint-N folder to continue from; drop --resume to start"),
    (["finetune", "--data", "dataset", "--out", "ft", "--model", "./nowhere"], 2,
     "mmcof-gen: --model ./nowhere: no such model folder; pass a folder holding config.json or a hub id"),
    (["finetune", "--data", "dataset", "--out", "ft", "--config", "bad.yaml"], 2, BAD_YAML),
    (["finetune", "--data", "dataset", "--out", "ft", "--lora-rank", "0"], 2,
     "mmcof-gen finetune: Invalid value for '--lora-rank': Input should be greater than or equal to 1 "
     "(see 'mmcof-gen finetune --help')"),
    (["finetune", "--data", "dataset", "--emit-llamafactory", "file"], 2,
     "mmcof-gen finetune: Invalid value for '--emit-llamafactory': dir 'file' is a file. "
     "(see 'mmcof-gen finetune --help')"),
]


@pytest.mark.parametrize("args, code, message", CASES, ids=[" ".join(args)[:60] for args, _, _ in CASES])
def test_every_command_answers_a_bad_input_with_its_exit_code_and_one_line(place, args, code, message):
    with ScriptedServer(lambda body: Reply(status=400)) as server:  # a model that refuses every request
        argv = [server.url if arg == "URL" else arg for arg in args]
        result = subprocess.run([*CLI, *argv], capture_output=True, text=True, cwd=place, timeout=120)
    assert "Traceback" not in result.stderr + result.stdout
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    if code == 2:  # a usage error: nothing ran, the line is all there is
        assert len(lines) == 1, result.stderr
    if message.endswith(": "):  # the parser's own words follow
        assert lines[-1].startswith(message)
    else:
        assert lines[-1] == message
