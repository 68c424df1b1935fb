"""Post-processing at scale: stats / filter / export / view on a run of N and 10N distinct photos.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py [--n 8] [--repeat 2] [--questions 1] [--baseline REF]

Makes 10N distinct photo-like JPEGs (2000x1500) in a temp dir and, per image, three trajectories as synthesize
writes them (R=448: a two-zoom chain and a direct answer sharing its frame; R=1024: a one-zoom chain), with
their true frame hashes and a ground-truth box the last crop covers, so every filter rule passes them. The run
of N is the first N images. With `--questions K` every image's questions are asked K times in other words, each
copy a whole run after the last, so an image's trajectories lie far apart. Each command runs as its own process
(`python -m mmcof_gen.cli`), timed wall clock; peak RSS is that of the largest single process (the command or
one of its workers) and the largest sum over the process tree (both sampled every 50 ms). Printed per command
and size: seconds per sample, the per-sample ratio 10N/N (1.0 = linear) and the peak-RSS ratio 10N/N, for
`--jobs 1` and all cores.

`--baseline REF` also runs the code of a git revision (extracted with `git archive`, run from its own folder,
without `--jobs` if its CLI has none) on the same runs in the same session, and prints the per-sample speed-up
of each current setting over it at 10N. Outputs of `--jobs 1` and all cores are compared byte for byte.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mmcof_gen import __version__  # noqa: E402
from mmcof_gen.config import PipelineConfig  # noqa: E402
from mmcof_gen.imaging import file_sha256, image_sha256, make_frame, zoom_region  # noqa: E402
from mmcof_gen.schema import (ChainStep, Provenance, Step, Task, Trajectory, Verdict, View, task_id,  # noqa: E402
                              trajectory_id)
from mmcof_gen.store import MANIFEST, write_json_atomic  # noqa: E402

WIDTH, HEIGHT = 2000, 1500
COMMANDS = ("stats", "filter", "export", "view")
MAX_PIXELS = PipelineConfig().images.max_pixels


# -- the run ----------------------------------------------------------------------------------------------
def photo_base(rng: np.random.Generator) -> np.ndarray:
    """Smooth colour blobs and gradients plus sensor-like noise: JPEG entropy close to a photo's."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    blobs = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((WIDTH, HEIGHT), Image.BICUBIC),
                       dtype=np.float32)
    gradient = np.stack([x / WIDTH * 120, y / HEIGHT * 120, (x + y) / (WIDTH + HEIGHT) * 120], axis=-1)
    return 0.5 * blobs + gradient + rng.normal(0, 8, (HEIGHT, WIDTH, 3)).astype(np.float32)


def write_images(folder: Path, count: int) -> list[str]:
    """`count` distinct JPEGs: the base photo rolled, tinted and stamped differently per image."""
    rng = np.random.default_rng(0)
    base = photo_base(rng)
    folder.mkdir(parents=True)
    names = []
    for i in range(count):
        pixels = np.roll(base, (i * 97) % HEIGHT, axis=0) + rng.normal(0, 20, 3).astype(np.float32)
        pixels[100 + i % 50:300 + i % 50, 200:400] = rng.integers(0, 256, 3)
        name = f"img_{i:05d}.jpg"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def trajectories_of(images: Path, name: str) -> list[Trajectory]:
    path = images / name
    sha = file_sha256(path)
    records = []
    for resolution, question, zooms in ((448, "What does the sign say?", 2), (448, "Is there a sign?", 0),
                                        (1024, "What does the sign say?", 1)):
        frame = make_frame(path, resolution, MAX_PIXELS)
        w, h = frame.size
        boxes = [(w * 3 // 10, h * 3 // 10, w * 6 // 10, h * 6 // 10), (w * 4 // 10, h * 4 // 10, w * 5 // 10, h * 5 // 10)]
        boxes = boxes[2 - zooms:] if zooms else []
        gt = []
        if boxes:  # the evidence: the middle of the last crop, in original pixels
            x1, y1, x2, y2 = zoom_region(boxes[-1], w, h)
            sx, sy = WIDTH / w, HEIGHT / h
            gt = [(int((x1 + 2) * sx), int((y1 + 2) * sy), int((x2 - 2) * sx), int((y2 - 2) * sy))]
        task = Task(id=task_id(sha, question), image=name, image_sha256=sha, question=question, answer="EXIT",
                    gt_boxes=gt, source="bench", question_type="text")
        steps = [Step(action="read", arguments={"what": "the whole frame"}, observation="0 text lines")]
        for box in boxes:
            steps += [Step(action="zoom", arguments={"bbox_2d": list(box)}, box=box, observation="crop"),
                      Step(action="read", box=box, arguments={"what": "the crop"}, observation="1 text line")]
        records.append(Trajectory(
            id=trajectory_id(task.id, resolution), task=task,
            view=View(resolution=resolution, width=w, height=h, original_width=WIDTH, original_height=HEIGHT,
                      frame_sha256=image_sha256(frame)),
            steps=steps, chain=[ChainStep(thought=f"Zoom {n} looks closer.", box=b) for n, b in enumerate(boxes, 1)],
            final_thought="The sign reads EXIT.", answer="EXIT",
            verdict=Verdict(correct=True, predicted="EXIT", expected="EXIT", reason="matches the ground truth"),
            needs_zoom=bool(boxes), provenance=Provenance(package_version=__version__, config_hash="bench"),
            status="accepted"))
    return records


def asked_again(record: Trajectory, copy: int) -> Trajectory:
    """The trajectory with its question asked a `copy`-th time in other words (a new task, the same frames)."""
    if copy == 0:
        return record
    question = f"{record.task.question} (wording {copy + 1})"
    task = record.task.model_copy(update={"question": question, "id": task_id(record.task.image_sha256, question)})
    return record.model_copy(update={"task": task, "id": trajectory_id(task.id, record.view.resolution)})


def write_run(run: Path, images: Path, names: list[str], questions: int) -> int:
    """The run of `names`: each image's trajectories `questions` times, a copy of the whole run after another,
    so that an image's trajectories lie far apart (as in a run of many workers)."""
    run.mkdir(parents=True)
    write_json_atomic(run / MANIFEST, {"tool": "mmcof-gen", "config": PipelineConfig().model_dump(mode="json"),
                                       "inputs": {"images": str(images), "questions": None},
                                       "versions": {"mmcof-gen": __version__}, "fingerprint": "bench"})
    records = {name: trajectories_of(images, name) for name in names}
    count = 0
    with (run / "trajectories.jsonl").open("w", encoding="utf-8") as handle:
        for copy in range(questions):
            for name in names:
                for record in records[name]:
                    handle.write(asked_again(record, copy).model_dump_json() + "\n")
                    count += 1
    return count


# -- measuring --------------------------------------------------------------------------------------------
def measure(command: list[str], env: dict, cwd: Path) -> tuple[float, float, int, int]:
    """(wall seconds, CPU seconds of the process tree, peak RSS of its largest process, peak RSS summed over
    the tree) of one command.

    Sampled every 50 ms: each process's CPU time and VmHWM (its own high-water mark), the tree's summed RSS.
    CPU time is what the work costs whatever else the machine runs; wall time is what parallelism buys."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    high_water: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tree_peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal tree_peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                tree_peak = max(tree_peak, sum(p.memory_info().rss for p in tree))
                for p in tree:
                    times = p.cpu_times()
                    cpu[p.pid] = max(cpu.get(p.pid, 0.0), times.user + times.system)
                    status = Path(f"/proc/{p.pid}/status").read_text()
                    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
                    high_water[p.pid] = max(high_water.get(p.pid, 0), int(line.split()[1]) * 1024)
            except (psutil.Error, OSError, StopIteration):
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({process.returncode}): {stderr.decode()[-2000:]}")
    return seconds, sum(cpu.values()), max(high_water.values(), default=0), tree_peak


def command_args(command: str, run: Path, out: Path, jobs: int | None) -> list[str]:
    jobs_flag = [] if jobs is None else ["--jobs", str(jobs)]
    return {"stats": ["stats", str(run), "--json"],
            "filter": ["filter", str(run), "--out", str(out / "filtered"), *jobs_flag],
            "export": ["export", str(run), "--out", str(out / "export"), *jobs_flag],
            "view": ["view", str(run), "--out", str(out / "report" / "report.html"), *jobs_flag]}[command]


def extract(ref: str, folder: Path) -> Path:
    """The tree of git revision `ref`, to run the code as it was."""
    archive = folder / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "baseline", filter="data")
    return folder / "baseline"


def has_jobs_flag(python: list[str], env: dict, cwd: Path) -> bool:
    shown = subprocess.run([*python, "-m", "mmcof_gen.cli", "export", "--help"], env=env, cwd=cwd,
                           capture_output=True, text=True)
    return "--jobs" in shown.stdout


def same_tree(a: Path, b: Path, skip: set[str]) -> list[str]:
    """Files that differ (or exist on one side only) between two output folders, ignoring `skip` names."""
    comparison = filecmp.dircmp(a, b, ignore=list(skip))
    differ = [str(a / n) for n in comparison.left_only + comparison.right_only]
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    differ += [str(a / n) for n in mismatch + errors]
    for sub in comparison.common_dirs:
        differ += same_tree(a / sub, b / sub, skip)
    return differ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8, help="images in the small run (the large one has 10x)")
    parser.add_argument("--scale", type=int, default=10, help="size of the large run in multiples of --n")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="'all cores' (default: os.cpu_count())")
    parser.add_argument("--baseline", metavar="REF", help="also time the code of this git revision")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each command per setting; the best counts")
    parser.add_argument("--questions", type=int, default=1,
                        help="ask each image's questions this many times in other words, the copies a whole run apart "
                             "(a run of many workers, or issue 17's demo run cloned with new questions)")
    args = parser.parse_args()
    python = [sys.executable]
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        names = write_images(tmp / "images", args.n * args.scale)
        sizes = {"N": args.n, f"{args.scale}N": args.n * args.scale}
        samples = {label: write_run(tmp / f"run-{label}", tmp / "images", names[:count], args.questions)
                   for label, count in sizes.items()}
        print(f"{len(names)} {WIDTH}x{HEIGHT} JPEGs, 3 trajectories each"
              + (f", asked {args.questions} times, copies a run apart" if args.questions > 1 else "") + "; runs: "
              + ", ".join(f"{label} = {count} images, {samples[label]} samples" for label, count in sizes.items())
              + f" (made in {time.perf_counter() - start:.0f} s); {os.cpu_count()} cores\n")

        settings = []  # (label, code folder, jobs)
        if args.baseline:
            code = extract(args.baseline, tmp)
            env = {**os.environ, "PYTHONPATH": str(code)}
            settings.append((f"baseline {args.baseline}", code, env, 1 if has_jobs_flag(python, env, code) else None))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        settings += [("current --jobs 1", ROOT, env, 1), (f"current --jobs {args.jobs}", ROOT, env, args.jobs)]

        # Settings take turns command by command, best of --repeat: load from other work hits them alike.
        results: dict = {}
        for repeat in range(args.repeat):
            for size in sizes:
                for command in COMMANDS:
                    for label, code, env, jobs in settings:
                        out = tmp / "out" / f"{label.replace(' ', '_')}-{size}-{repeat}"
                        args_ = command_args(command, tmp / f"run-{size}", out, jobs)
                        got = measure([*python, "-m", "mmcof_gen.cli", *args_], env, code)
                        old = results.get((label, size, command), got)
                        results[(label, size, command)] = (min(old[0], got[0]), min(old[1], got[1]),
                                                           max(old[2], got[2]), max(old[3], got[3]))

        small, large = sizes
        print(f"{'setting':<22} {'command':<7} {'wall s/sample':>15} {'ratio':>6} {'CPU s/sample':>15} {'ratio':>6} "
              f"{'RSS MB':>9} {'ratio':>6} {'tree MB':>9} {'ratio':>6}")
        print(f"{'':<22} {'':<7} {f'N / {large}':>15} {'':>6} {f'N / {large}':>15} {'':>6} {f'N / {large}':>9} {'':>6} "
              f"{f'N / {large}':>9}")
        per_sample = {}
        for label, *_ in settings:
            for command in COMMANDS:
                (w1, c1, r1, t1), (w2, c2, r2, t2) = results[(label, small, command)], results[(label, large, command)]
                w1, w2, c1, c2 = w1 / samples[small], w2 / samples[large], c1 / samples[small], c2 / samples[large]
                per_sample[(label, command)] = (w2, c2)
                print(f"{label:<22} {command:<7} {f'{w1:.3f} / {w2:.3f}':>15} {w2 / w1:>6.2f} "
                      f"{f'{c1:.3f} / {c2:.3f}':>15} {c2 / c1:>6.2f} {f'{r1 / 1e6:.0f} / {r2 / 1e6:.0f}':>9} "
                      f"{r2 / r1:>6.2f} {f'{t1 / 1e6:.0f} / {t2 / 1e6:.0f}':>9} {t2 / t1:>6.2f}")
        if args.baseline:
            base = settings[0][0]
            print(f"\nper-sample speed-up over {base} at {large} (baseline / setting), wall clock and CPU time:")
            for label, *_ in settings[1:]:
                print(f"  {label:<22} " + "  ".join(
                    f"{c} {per_sample[(base, c)][0] / per_sample[(label, c)][0]:.2f}x"
                    f" (CPU {per_sample[(base, c)][1] / per_sample[(label, c)][1]:.2f}x)" for c in COMMANDS))
        one, many = (tmp / "out" / f"{s[0].replace(' ', '_')}-{large}-0" for s in settings[-2:])
        differ = same_tree(one, many, skip={".mmcof-filter", ".mmcof-export", "manifest.json", "filter_report.json",
                                            "export_report.json", "README.md"})
        print(f"\noutputs of --jobs 1 and --jobs {args.jobs} at {large}: "
              + ("byte-identical (data files, images, report pages)" if not differ else f"DIFFER: {differ[:5]}"))


if __name__ == "__main__":
    main()
