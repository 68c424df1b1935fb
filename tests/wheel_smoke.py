"""The wheel as users install it: build it, install it non-editable into a fresh venv, and from a temporary
folder outside the checkout run the demo chain and the commands that must work (or fail cleanly) there.

    python tests/wheel_smoke.py --reference outputs/demo     # `make test` runs it after pytest

`--reference` is a folder written by `make demo` (its run/, filtered/, export/): the wheel's counts must equal
its. The venv (`.venv-wheel`, recreated each time; pip's cache makes that quick) first holds the wheel alone,
to check that `[data]` commands name their extra, then the wheel with `[data]`. Exit code 0 when every check
passes; the first failed check ends the script with its command and output.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COUNTS = ("images", "tasks", "accepted", "direct", "zoom", "rejected", "errors", "per_resolution")


def run(command: list, cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    """Run a command outside the checkout (no PYTHONPATH), checking its exit code."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != expect:
        sys.exit(f"FAILED (exit {result.returncode}, expected {expect}): {' '.join(map(str, command))}\n"
                 f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"FAILED: {what}")
    print(f"ok  {what}")


def missing_extra(command: list, cwd: Path, extra: str, feature: str) -> None:
    """A command whose extra is not installed: one line naming the pip command, exit 2."""
    stderr = run(command, cwd, expect=2).stderr
    line = f"mmcof-gen: {feature} needs the [{extra}] extra: pip install 'mmcof-gen[{extra}]'"
    check(stderr.strip() == line, f"[{extra}] missing: {' '.join(map(str, command[1:3]))} -> exit 2, {line!r}")


def build_wheel(dist: Path) -> Path:
    shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)  # setuptools would pack files left there by older builds
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, REPO], cwd=REPO)
    wheel, = dist.glob("mmcof_gen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    check(not [n for n in names if "/testing/" in n or n.startswith("tests/") or "scripted_server" in n],
          f"{wheel.name} holds no test doubles")
    for needed in ("prompts/cof/system.txt", "prompts/template/think_answer.txt", "pipelines/default.yaml",
                   "pipelines/vllm-qwen2.5-vl.yaml", "photos/NOTICE.md", "photos/coffee.jpg"):
        check(f"mmcof_gen/resources/{needed}" in names, f"{wheel.name} holds mmcof_gen/resources/{needed}")
    return wheel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a folder written by `make demo`")
    parser.add_argument("--venv", type=Path, default=REPO / ".venv-wheel")
    args = parser.parse_args()
    reference = args.reference.resolve()
    with tempfile.TemporaryDirectory(prefix="mmcof-wheel-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work / "dist")
        run([sys.executable, "-m", "venv", "--clear", args.venv], cwd=work)
        python, cli = args.venv / "bin" / "python", args.venv / "bin" / "mmcof-gen"
        run([python, "-m", "pip", "install", "-q", wheel], cwd=work)

        # core only: the [data] commands say so
        (work / "bench.jsonl").write_text('{"image": "a.jpg", "question": "Q?", "answer": "A"}\n')
        missing_extra([cli, "eval", "--bench", "bench.jsonl", "--endpoint", "http://127.0.0.1:9/v1",
                       "--served-model", "m", "--out", "eval"], work, "data", "eval (its report.png)")
        check(not (work / "eval").exists(), "eval left no folder behind")

        run([python, "-m", "pip", "install", "-q", f"{wheel}[data]"], cwd=work)
        where = run([python, "-c", "import mmcof_gen; print(mmcof_gen.__file__)"], work).stdout.strip()
        check(where.startswith(str(args.venv.resolve())), f"mmcof_gen is imported from the venv ({where})")

        # the demo chain, as `make demo` runs it, from a folder outside the checkout
        run([python, "-m", "mmcof_gen.scenes", "--out", "demo/images"], work)
        scenes = sorted(p.name for p in (work / "demo" / "images").glob("scene_*.jpg"))
        check(len(scenes) == 6 and (work / "demo/images/photos/NOTICE.md").is_file(), "scenes: 6 scenes and the photos")
        run([cli, "synthesize", "--images", "demo/images", "--out", "demo/run"], work)
        stats = json.loads(run([cli, "stats", "demo/run", "--json"], work).stdout)
        expected = json.loads(run([cli, "stats", reference / "run", "--json"], work).stdout)
        check({k: stats[k] for k in COUNTS} == {k: expected[k] for k in COUNTS},
              f"synthesize + stats: {stats['accepted']} accepted ({stats['direct']} direct, {stats['zoom']} zoom), "
              f"{stats['rejected']} rejected, {stats['errors']} errors; equal to make demo's")
        run([cli, "filter", "demo/run", "--out", "demo/filtered"], work)
        kept = json.loads((work / "demo/filtered/filter_report.json").read_text())["kept"]
        check(kept == json.loads((reference / "filtered/filter_report.json").read_text())["kept"],
              f"filter: kept {kept}, as make demo")
        run([cli, "export", "demo/filtered", "--format", "sharegpt", "--out", "demo/export"], work)
        report = json.loads((work / "demo/export/export_report.json").read_text())
        mine = {k: report[k] for k in ("samples", "direct", "zoom", "dropped")}
        check(mine == {k: json.loads((reference / "export/export_report.json").read_text())[k] for k in mine},
              f"export: {mine}, as make demo")
        samples = json.loads((work / "demo/export/mmcof.json").read_text())
        check(len(samples) == report["samples"] and all((work / "demo/export" / image).is_file()
                                                         for sample in samples for image in sample["images"]),
              "export: every sample's images are files")
        check(all((work / "demo/export" / name).is_file() for name in ("dataset_info.json", "README.md")),
              "export: dataset_info.json and README.md")
        run([cli, "validate", "demo/export"], work)
        check(True, "validate: every check passes (exit 0)")
        for fmt in ("verl", "swift-grpo"):  # the run's tasks as RL prompts
            run([cli, "export", "demo/run", "--format", fmt, "--out", f"demo/rl-{fmt}"], work)
            rl_report = json.loads((work / f"demo/rl-{fmt}/export_report.json").read_text())
            rl_expected = json.loads((reference / f"rl-{fmt}/export_report.json").read_text())
            counts = {k: rl_report[k] for k in ("tasks", "samples", "train", "test", "skipped")}
            check(counts == {k: rl_expected[k] for k in counts}, f"export --format {fmt}: {counts}, as make demo")
            problems = run([python, "-c", "import sys; from mmcof_gen.export.rl import check_export; "
                                          "print(*check_export(sys.argv[1]), sep=chr(10))", f"demo/rl-{fmt}"],
                           work).stdout.strip()
            check(not problems, f"export --format {fmt}: every image opens, every ground truth is non-empty")
        printed = run([cli, "view", "demo/run", "--out", "demo/report.html"], work).stdout.strip()
        check(printed.endswith("report.html") and (work / "demo/report.html").stat().st_size > 0, "view: report.html")

        # configs from anywhere
        listing = run([cli, "pipelines"], work).stdout
        check([line.split()[0] for line in listing.splitlines()] ==
              ["default", "finetune", "llm-planner-choose", "llm-planner-ocr", "llm-planner-vlm-tools", "openai-api",
               "transformers-local", "vllm-qwen2.5-vl", "vllm-qwen3-vl"], "pipelines lists 9")
        (work / "empty").mkdir()
        stderr = run([cli, "synthesize", "--images", "empty", "--out", "empty-run"], work,
                     expect=1).stderr  # nothing to do, but the config resolved and the run folder opened
        check(stderr.strip().splitlines()[-1] ==
              "mmcof-gen: synthesize: no image in empty (searched recursively); nothing was made",
              "an empty image folder: exit 1, one line")
        manifest = json.loads((work / "empty-run/manifest.json").read_text())
        check(manifest["config"]["name"] == "default" and
              manifest["config"]["prompts_dir"].endswith("mmcof_gen/resources/prompts/template"),
              "the default pipeline resolves, with the shipped template prompts")
        stderr = run([cli, "synthesize", "--images", "empty", "--out", "vllm-run", "--config", "vllm-qwen2.5-vl"],
                     work, expect=2).stderr  # no server on localhost:8000: one line before any work
        check(stderr.strip().splitlines()[-1].startswith(
              "mmcof-gen: models.planner: no server answers at http://localhost:8000/v1; start it first (vllm serve "
              "Qwen/Qwen2.5-VL-7B-Instruct") and not (work / "vllm-run").exists(),
              "--config vllm-qwen2.5-vl resolves; an unreachable server: exit 2, one line with its vllm serve command")
        default = run([cli, "pipelines", "--show", "default"], work).stdout
        changed = default.replace("resolutions: [448, 672, 1024, 1920]", "resolutions: [448]")
        check(changed != default, "the default pipeline states its resolutions")
        (work / "mine").mkdir()
        (work / "mine/pipeline.yaml").write_text(changed)
        (work / "one").mkdir()
        shutil.copy(work / "demo/images/scene_000.jpg", work / "one")
        run([cli, "synthesize", "--images", "one", "--out", "mine-run", "--config", "mine/pipeline.yaml"], work)
        mine = [json.loads(line) for line in (work / "mine-run/trajectories.jsonl").read_text().splitlines()]
        wanted = [json.loads(line) for line in (reference / "run/trajectories.jsonl").read_text().splitlines()]
        wanted = [t for t in wanted if t["task"]["image"] == "scene_000.jpg" and t["view"]["resolution"] == 448]
        check(len(mine) > 0 and sorted((t["id"], t["status"]) for t in mine) == sorted((t["id"], t["status"])
                                                                                        for t in wanted),
              f"a copy of the default pipeline with resolutions: [448]: {len(mine)} trajectories of scene_000.jpg, "
              "the same as make demo's at 448")

        # finetune --emit-llamafactory needs no torch
        run([cli, "finetune", "--data", "demo/export", "--emit-llamafactory", "lf"], work)
        check((work / "lf/mmcof_sft.yaml").is_file() and (work / "lf/dataset_info.json").is_file(),
              "finetune --emit-llamafactory writes mmcof_sft.yaml and dataset_info.json")

        # the extras this venv lacks: one line, exit 2
        missing_extra([cli, "finetune", "--data", "demo/export", "--out", "ft"], work, "hf",
                      "finetune (training; --emit-llamafactory needs no extra)")
        missing_extra([cli, "synthesize", "--images", "demo/images", "--out", "ray-run", "--executor", "ray"], work,
                      "ray", "executor ray")
        (work / "yolo.yaml").write_text(
            "agent: {kind: vlm}\nmodels:\n  planner: {backend: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
            "  detector: {backend: yolo-world, model: yolov8s-worldv2.pt}\n")
        missing_extra([cli, "synthesize", "--images", "demo/images", "--out", "yolo-run", "--config", "yolo.yaml"],
                      work, "yolo", "models.detector backend yolo-world")
        check(not (work / "ray-run").exists() and not (work / "yolo-run").exists(), "no run folder was made")
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
