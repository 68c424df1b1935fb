import json
import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "mmcof_gen.cli"]


def run_cli(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["synthesize", "--images", "/nonexistent/dir"], "'/nonexistent/dir' does not exist"),
    (["synthesize", "--imgs", "x"], "No such option: --imgs"),
    (["stats"], "Missing argument 'run_dir'"),
])
def test_bad_flags_and_paths_give_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_resolutions_must_be_integers(tmp_path):
    result = run_cli("synthesize", "--images", tmp_path, "--out", tmp_path / "run", "--resolutions", "448,big")
    assert result.returncode == 2 and "comma-separated list of integers" in result.stderr


def test_stats_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = run_cli("stats", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"mmcof-gen: {tmp_path} is not a run folder (no manifest.json); pass the --out folder of a synthesize run"


def test_synthesize_refuses_to_write_into_a_foreign_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = run_cli("synthesize", "--images", tmp_path / "images", "--out", tmp_path / "out")
    assert result.returncode == 2 and "is not empty and holds no manifest.json" in result.stderr
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_empty_folder_makes_an_empty_run_exit_1_and_stats_json(tmp_path):
    (tmp_path / "images").mkdir()
    result = run_cli("synthesize", "--images", tmp_path / "images", "--out", tmp_path / "run")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (f"mmcof-gen: synthesize: no image in {tmp_path / 'images'} "
                                                      "(searched recursively); nothing was made")
    stats = json.loads(run_cli("stats", tmp_path / "run", "--json").stdout)
    assert {k: stats[k] for k in ("tasks", "accepted", "rejected", "errors", "direct", "zoom")} == dict.fromkeys(
        ("tasks", "accepted", "rejected", "errors", "direct", "zoom"), 0)


def test_help_lists_only_working_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "synthesize" in result.stdout and "stats" in result.stdout
