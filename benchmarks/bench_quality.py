"""Data quality of the offline default pipeline against a truth it did not produce: the scene generator's.

Run: python benchmarks/bench_quality.py [--scenes 3] [--family demo|street] [--seed N] [--invert] [--truth-only]
Makes `--scenes` high-resolution street scenes with known sign texts and plate boxes (mmcof_gen.scenes,
with a seed of its own, never the demo's 0; `--family street`: the scene family the OCR rules were never
tuned on, other fonts, letter spacing, plates and backgrounds, seed 2027 unless given), plus one copy of the first scene downscaled to 900 px wide
(smaller than R=1024 and R=1920, so two of its frames are pixel-identical), runs the default pipeline
(pipelines/default.yaml) at 448/672/1024/1920 and prints, against the generator's truth:

- asked: share of the signs that a task asks about (a task's ground-truth box centre in the plate);
- truth exact: share of asked signs whose ground truth is the sign's text exactly (spaces and digits count);
- precision: share of accepted samples whose answer is the sign's text exactly;
- localisation: share of accepted zoom samples whose last zoom crop covers at least half the plate;
- zoom rate per R: zoom samples / accepted samples at each R (it should fall as R grows);
- actions per accepted sample: raw steps (read, locate, zoom, answer) of its search;
- duplicate frames: accepted samples beyond the first with the same frame hash and question;
- `--truth-only`: only the tasks (asked, truth exact, signs not asked), as the worker makes them, no search;
- signs not asked, by why: the reason a candidate over the sign was dropped at synthesis (`tasks.jsonl`'s
  `rejected`, as `stats` counts them), else "no candidate" (not read at truth size, or not small, confident
  and alone in its cell).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image, ImageOps
from rich.console import Console

from mmcof_gen.config import load_config
from mmcof_gen.filtering import evidence_coverage
from mmcof_gen.models.ocr import OcrEngine
from mmcof_gen.schema import ImageTasks
from mmcof_gen.tasks.base import task_prompts
from mmcof_gen.tasks.text_questions import synthesize_text_tasks, word_gaps
from mmcof_gen.tasks.base import truth_size
from mmcof_gen.scenes import FAMILIES, generate_scenes
from mmcof_gen.store import RunStore
from mmcof_gen.synthesize import synthesize

SMALL_WIDTH = 900
DEFAULT_SEEDS = {"demo": 1009, "street": 2027}


def spelled(text: str) -> str:
    """Exact text up to runs of white space: "BANK 64" and "BANK64" differ, "BANK  64" does not."""
    return " ".join(text.split())


def make_images(out: Path, count: int, seed: int, invert: bool = False, family: str = "demo") -> dict[str, list[dict]]:
    """The scenes and one small copy; per image file, its signs (text, box in image pixels). `invert`: each
    scene's colours inverted, so its signs are light letters on dark plates."""
    generate_scenes(out, count, seed, family)
    doc = json.loads((out / "scenes.json").read_text())
    truth = {scene["file"]: scene["signs"] for scene in doc["scenes"]}
    for name in truth if invert else ():
        with Image.open(out / name) as image:
            inverted = ImageOps.invert(image.convert("RGB"))
        inverted.save(out / name, quality=95)
    first = doc["scenes"][0]
    with Image.open(out / first["file"]) as image:
        k = SMALL_WIDTH / image.width
        image.resize((SMALL_WIDTH, round(image.height * k)), Image.LANCZOS).save(out / "small_copy.jpg", quality=95)
    truth["small_copy.jpg"] = [{**sign, "box": [round(v * k) for v in sign["box"]]} for sign in first["signs"]]
    return truth


def _sign_of(box, signs: list[dict]) -> dict | None:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return next((s for s in signs if s["box"][0] <= cx <= s["box"][2] and s["box"][1] <= cy <= s["box"][3]), None)


def measure_tasks(images: list[ImageTasks], truth: dict[str, list[dict]],
                  read: dict[str, list] | None = None) -> tuple[dict, dict[str, dict | None]]:
    """Signs asked, ground truth exact and why the others were not asked; and each task's sign. `read`: the
    boxes OCR read in each image at truth size, to tell a sign it did not read from one no rule made a task of."""
    signs_total = sum(len(signs) for name, signs in truth.items())
    asked, exact, wrong_truth = 0, 0, []
    task_sign: dict[str, dict | None] = {}
    not_asked: Counter = Counter()
    for image in images:
        asked_here = {id(_sign_of(task.gt_boxes[0], truth[image.image])) for task in image.tasks if task.gt_boxes}
        why = {id(sign): r.reason.split(":")[0] for r in image.rejected
               if (sign := _sign_of(r.box, truth[image.image])) is not None}
        for sign in truth[image.image]:
            if id(sign) in asked_here:
                continue
            if id(sign) not in why and read is not None:
                seen_by_ocr = any(_sign_of(box, [sign]) for box in read[image.image])
                why[id(sign)] = ("no candidate: read, but not small, confident and alone in its cell" if seen_by_ocr
                                 else "no candidate: not read at truth size")
            not_asked[why.get(id(sign), "no candidate")] += 1
        seen = set()
        for task in image.tasks:
            sign = _sign_of(task.gt_boxes[0], truth[image.image]) if task.gt_boxes else None
            task_sign[task.id] = sign
            if sign is None or id(sign) in seen:
                continue
            seen.add(id(sign))
            asked += 1
            if spelled(task.answer or "") == spelled(sign["text"]):
                exact += 1
            else:
                wrong_truth.append(f"{task.answer!r} for {sign['text']!r}")
    return {"signs": signs_total, "asked": asked, "truth_exact": exact, "wrong_truth": wrong_truth,
            "not_asked": dict(not_asked.most_common())}, task_sign


def measure(run: Path, truth: dict[str, list[dict]]) -> dict:
    store = RunStore(run)
    tasks, task_sign = measure_tasks(list(store.image_tasks()), truth)
    accepted, correct, zooms, located, actions = 0, 0, 0, 0, 0
    per_r: dict[int, Counter] = {}
    keys: Counter = Counter()
    wrong_answers = []
    for t in store.trajectories():
        if t.status != "accepted":
            continue
        sign = task_sign.get(t.task.id)
        accepted += 1
        actions += len(t.steps)
        per_r.setdefault(t.view.resolution, Counter()).update(accepted=1, zoom=int(bool(t.chain)))
        keys[(t.view.frame_sha256, t.task.question)] += 1
        if sign is not None and spelled(t.answer or "") == spelled(sign["text"]):
            correct += 1
        else:
            wrong_answers.append(f"{t.answer!r} for {sign['text'] if sign else None!r}")
        if t.chain:
            zooms += 1
            plate = t.model_copy(update={"task": t.task.model_copy(update={"gt_boxes": [
                tuple(sign["box"])] if sign else []})})
            located += sign is not None and evidence_coverage(plate) >= 0.5
    return {
        **tasks, "accepted": accepted, "correct": correct, "wrong_answers": wrong_answers,
        "zoom_samples": zooms, "located": located, "actions": actions,
        "zoom_rate": {r: round(c["zoom"] / c["accepted"], 2) for r, c in sorted(per_r.items())},
        "duplicates": sum(n - 1 for n in keys.values()),
    }


def tasks_only(images: Path, truth: dict[str, list[dict]], config) -> dict:
    """The tasks the default makes for each image (the worker's synthesis: OCR at truth size, the two
    readers, `tasks/text_questions.py`), scored as `measure` scores them, without the searches."""
    engine = OcrEngine(config.ocr.tile_size, config.ocr.tile_overlap, config.ocr.min_score)
    prompts = task_prompts(config)
    records, read = [], {}
    for name in sorted(truth):
        with Image.open(images / name) as opened:
            image = opened.convert("RGB")
        size = truth_size(*image.size, config.images.truth_max_pixels)
        full = image.size
        image = image.resize(size, Image.LANCZOS) if image.size != size else image
        hits = engine.read(image)
        k = full[0] / size[0]
        read[name] = [[v * k for v in hit.box] for hit in hits]
        tasks, rejected = synthesize_text_tasks(
            hits, size, full, name, name, prompts, config.tasks,
            lambda hit, line_height, unclip: engine.reread(image, hit.box, line_height, unclip),
            lambda hit: word_gaps(image, hit.box), lambda hit: engine.read_line(image, hit.box))
        records.append(ImageTasks(id=name, image=name, image_sha256=name, width=full[0], height=full[1], tasks=tasks,
                                  rejected=rejected))
    return measure_tasks(records, truth, read)[0]


def distinct(items: list[str]) -> list[str]:
    return sorted(set(items))


def share(part: int, whole: int) -> str:
    return f"{part}/{whole} = {part / whole:.1%}" if whole else "n/a (0)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=3, help="high-resolution scenes to generate")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="demo", help="scene family (mmcof_gen.scenes)")
    parser.add_argument("--seed", type=int, help="scene seed (the demo uses 0; default 1009, street 2027)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--invert", action="store_true", help="light letters on dark plates (colours inverted)")
    parser.add_argument("--truth-only", action="store_true", help="only the tasks and their ground truth, no search")
    args = parser.parse_args()
    args.seed = DEFAULT_SEEDS[args.family] if args.seed is None else args.seed
    if args.seed == 0:
        parser.error("--seed 0 makes the demo's scenes; the benchmark needs scenes of its own")
    config = load_config()
    with tempfile.TemporaryDirectory() as tmp:
        images, run = Path(tmp) / "images", Path(tmp) / "run"
        truth = make_images(images, args.scenes, args.seed, args.invert, args.family)
        (images / "scenes.json").unlink()
        shutil.rmtree(images / "photos")  # the bundled photos hold no known text
        start = time.perf_counter()
        if args.truth_only:
            m = tasks_only(images, truth, config)
        else:
            synthesize(config, images, run, console=Console(stderr=True, quiet=True))
            m = measure(run, truth)
        seconds = time.perf_counter() - start
    print(f"quality benchmark: {args.scenes} {args.family} scenes (seed {args.seed}{', inverted' if args.invert else ''}) + 1 copy "
          f"{SMALL_WIDTH} px wide, "
          f"R={config.resolutions}; {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
          f"{seconds:.0f} s")
    print(f"  signs asked about          {share(m['asked'], m['signs'])}")
    print(f"  ground truth exact         {share(m['truth_exact'], m['asked'])}  wrong: {distinct(m['wrong_truth'])}")
    print(f"  signs not asked, why       {m['not_asked']}")
    if args.json:
        args.json.write_text(json.dumps({**m, "seconds": round(seconds, 1)}, indent=2) + "\n")
    if args.truth_only:
        return
    print(f"  accepted-answer precision  {share(m['correct'], m['accepted'])}  wrong: {distinct(m['wrong_answers'])}")
    print(f"  localisation (>= 1/2 box)  {share(m['located'], m['zoom_samples'])}")
    print(f"  zoom rate per R            {m['zoom_rate']}")
    print(f"  actions per accepted       {m['actions'] / max(1, m['accepted']):.2f}")
    print(f"  duplicate frames           {m['duplicates']}")


if __name__ == "__main__":
    main()
