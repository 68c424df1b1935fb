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
    listed = result.stdout.split("Commands:")[1]
    assert [line.split()[0] for line in listed.splitlines() if line.strip()] == [
        "synthesize", "stats", "filter", "export", "validate", "view", "finetune", "eval", "pipelines"]


def run_without(modules, *args, cwd=None):
    """The CLI as in an install without these modules (an import of them fails as if never installed)."""
    blocker = f"import sys; sys.modules.update(dict.fromkeys({list(modules)!r})); sys.argv[0] = 'mmcof-gen'; " \
              "from mmcof_gen.cli import main; main()"
    return subprocess.run([sys.executable, "-c", blocker, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("extra, modules, args, feature", [
    ("hf", ["torch", "transformers"], ["finetune", "--data", "{tmp}", "--out", "{tmp}/ft"],
     "finetune (training; --emit-llamafactory needs no extra)"),
    ("hf", ["torch"], ["eval", "--bench", "{tmp}", "--model", "m"], "eval --model (in-process; or serve it and pass --endpoint)"),
    ("ray", ["ray"], ["synthesize", "--images", "{tmp}", "--out", "{tmp}/run", "--executor", "ray"], "executor ray"),
    ("yolo", ["ultralytics"], ["synthesize", "--images", "{tmp}", "--out", "{tmp}/run", "--config", "{tmp}/yolo.yaml"],
     "models.detector backend yolo-world"),
    ("data", ["pyarrow"], ["export", "{tmp}/run", "--format", "parquet", "--out", "{tmp}/pq"], "export --format parquet"),
    ("data", ["matplotlib"], ["eval", "--bench", "{tmp}", "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m",
                              "--out", "{tmp}/eval"], "eval (its report.png)"),
])
def test_a_missing_extra_is_one_line_naming_it_and_exit_2(tmp_path, extra, modules, args, feature):
    from tests.support.runs import make_trajectory, write_noise_image, write_run

    write_noise_image(tmp_path / "images" / "a.png", (600, 400), seed=1)
    write_run(tmp_path / "run", tmp_path / "images", [make_trajectory(tmp_path / "images", "a.png", 448)])
    (tmp_path / "yolo.yaml").write_text(
        "agent: {kind: vlm}\nmodels:\n  planner: {backend: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "  detector: {backend: yolo-world, model: yolov8s-worldv2.pt}\n")
    result = run_without(modules, *(a.format(tmp=tmp_path) for a in args))
    assert (result.returncode, result.stderr) == (
        2, f"mmcof-gen: {feature} needs the [{extra}] extra: pip install 'mmcof-gen[{extra}]'\n")
    assert not any((tmp_path / name).exists() for name in ("ft", "pq", "eval"))


def test_an_unguarded_import_of_an_extra_still_names_it(tmp_path):
    """The safety net of main(): any ModuleNotFoundError of an extra's module becomes the one line."""
    code = ("import sys; sys.argv[1:] = ['stats', '.']; import mmcof_gen.cli as cli\n"
            "def boom(*a, **k): raise ModuleNotFoundError(\"No module named 'peft'\", name='peft')\n"
            "cli.RunStore = boom; cli.main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert (result.returncode, result.stderr) == (2, "mmcof-gen: stats needs the [hf] extra: pip install 'mmcof-gen[hf]'\n")


def test_pipelines_lists_and_shows_the_shipped_ones(tmp_path):
    from mmcof_gen import resources

    listing = run_cli("pipelines", cwd=tmp_path)
    assert listing.returncode == 0
    width = max(map(len, resources.pipelines()))  # names padded to the longest one
    assert listing.stdout.splitlines()[0] == f"{'default':<{width}}  The offline embedded default: no GPU, no hub, no server."
    assert [line.split()[0] for line in listing.stdout.splitlines()] == list(resources.pipelines())
    shown = run_cli("pipelines", "--show", "vllm-qwen2.5-vl", cwd=tmp_path)
    assert shown.stdout == (resources.PIPELINES / "vllm-qwen2.5-vl.yaml").read_text()
    unknown = run_cli("pipelines", "--show", "nope", cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr) == (2, "mmcof-gen: pipelines --show nope: no shipped pipeline of that "
                                                       "name; one of: " + ", ".join(resources.pipelines()) + "\n")
