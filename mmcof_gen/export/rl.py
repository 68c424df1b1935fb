"""RL-stage exports (`--format verl`, `--format swift-grpo`): the TASKS of a run as GRPO prompts, never the chains.

The supervised formats write one sample per accepted chain; an RL trainer needs the opposite: the question, the
image and a ground truth its reward can check, and the policy finds its own chain. So the source here is every
(task, R) trajectory record of the run, rejected ones included: a task no chain solved is still a valid (hard)
prompt when its ground truth is trusted (`trust`).

One row per TASK, not per (task, R): GRPO samples k rollouts of one prompt and learns from their spread; a
task repeated at several R would be drawn several times an epoch and weigh more for being measured more. What
each R measured (answered directly or not, the verified chain's zooms and boxes, accepted or why rejected) is
kept per R in `extra_info.difficulty`.

`images[0]` is the working frame at the task's largest measured R (its smart-resized frame, sides multiples
of 28): the image our boxes and the verified chains refer to, one a Qwen2.5-VL processor passes unresized when
its max_pixels holds it, so the pixels the policy sees, the boxes it writes and the crop the trainer's zoom
tool cuts (verl's `image_zoom_in_tool` and ms-swift's deepeyes scheduler crop the image they are given) agree.
For another student (`--target`, targets.py) the prompt and the image are that student's, as the supervised
formats write them: Qwen3-VL's system prompt declares its own zoom tool (boxes in 0-1000) and `images[0]` is the
frame as its processor sizes it (factor 32); its pass rate is measured as eval evaluates that student.

Row layouts were read from the trainers' code, not guessed (docs/format.md cites the files and commits).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from pathlib import Path

from PIL import Image

from mmcof_gen import cof_format, resources
from mmcof_gen.errors import ConfigError
from mmcof_gen.export.files import IMAGES_DIR, PNG_LEVEL, ImageFiles, RecordWriter
from mmcof_gen.evaluate import EvalSettings, run_episode
from mmcof_gen.imaging import image_to_png_bytes
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.replay import WINDOW, FrameSource, ReplayError, replayed
from mmcof_gen.schema import Manifest, Task, Trajectory, short_hash
from mmcof_gen.scoring import score_by_rules
from mmcof_gen.store import AtomicFile, RunStore
from mmcof_gen.targets import DEFAULT_TARGET, TARGETS, Target

DATA_SOURCE = "mmcof"
"""the `data_source` of every row; `mmcof_gen.rewards.compute_score` scores every data source alike"""
AGENT_NAME = "tool_agent"  # verl's ToolAgentLoop
ABILITY = "vision"
SYNTHESIZED = frozenset({"vlm-synthesis", "ocr-synthesis"})
"""task sources whose answer this project's own models wrote (tasks/vlm_writer.py SOURCE, tasks/text_questions.py):
their ground truth is trusted only once a chain or the consistency check confirmed it"""
SPLITS = ("train", "test")


@dataclass(frozen=True)
class PassRate:
    """`--pass-rate-model URL NAME --samples k --keep-pass-rate LO..HI`: k sampled episodes of eval's loop per
    task against a served policy; with a band, only the tasks whose pass rate lies in it are kept."""

    model: ChatModelConfig
    samples: int = 8
    band: tuple[float, float] | None = None
    temperature: float = 1.0
    concurrency: int = 16


@dataclass(frozen=True)
class RLOptions:
    embed_images: bool = False
    test_fraction: float = 0.1
    pass_rate: PassRate | None = None
    target: str = DEFAULT_TARGET
    """the student the prompts are for (targets.TARGETS, `export --target`): its system prompt, frame and loop"""


@dataclass
class Prompt:
    """One task as an RL prompt: what both layouts are built from."""

    task: Task
    image: str | bytes  # the frame's absolute path, or its PNG bytes (--embed-images)
    size: tuple[int, int]
    resolution: int
    difficulty: dict
    trust: str
    student: Target
    split: str = "train"
    index: int = 0

    @property
    def ground_truth(self) -> str:
        """The verified answer as the samples state it: the option letter for multiple choice."""
        return cof_format.stated_answer(self.task.answer or "", self.task.options)

    @property
    def image_uri(self) -> str:
        """What qwen_vl_utils' fetch_image (verl's tool) and ms-swift's loaders open: a file URI or a data URI."""
        if isinstance(self.image, bytes):
            return "data:image/png;base64," + base64.b64encode(self.image).decode("ascii")
        return "file://" + self.image


def prompt_messages(prompt: Prompt) -> list[dict]:
    """System (the student's CoF prompt with its zoom tool's schema) + the first user turn, as SFT export and eval
    build them."""
    task = prompt.task
    return [{"role": "system", "content": prompt.student.system_prompt},
            {"role": "user", "content": cof_format.user_prompt(task.question, task.options)}]


def extra_info(prompt: Prompt) -> dict:
    """verl's `extra_info` (split, index, tool kwargs) plus the question's facts and its measured difficulty.

    `create_kwargs.image` is what verl's own `image_zoom_in_tool` opens; `image_path` (None when embedded),
    `question` and `ground_truth` are what the CoF recipe's `zoomin_vision_tool` reads."""
    task, truth = prompt.task, prompt.ground_truth
    path = prompt.image if isinstance(prompt.image, str) else None  # None: embedded
    create = {"image": prompt.image_uri, "image_path": path, "question": task.question, "ground_truth": truth}
    execute = {"image_path": path}
    return {
        "split": prompt.split, "index": prompt.index, "answer": truth, "question": task.question,
        "options": task.options, "option_text": task.answer if task.options else None,
        "need_tools_kwargs": True,
        "tools_kwargs": {cof_format.TOOL_NAME: {"create_kwargs": create, "execute_kwargs": execute}},
        "task_id": task.id, "question_type": task.question_type, "source": task.source, "trust": prompt.trust,
        "resolution": prompt.resolution, "image_size": list(prompt.size),
        "gt_boxes": [list(box) for box in task.gt_boxes],
        "difficulty": prompt.difficulty,
    }


def verl_row(prompt: Prompt) -> dict:
    image = {"bytes": prompt.image} if isinstance(prompt.image, bytes) else {"image": prompt.image_uri}
    return {"data_source": DATA_SOURCE, "agent_name": AGENT_NAME, "prompt": prompt_messages(prompt),
            "images": [image], "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": prompt.ground_truth}, "extra_info": extra_info(prompt)}


def swift_row(prompt: Prompt) -> dict:
    image = prompt.image_uri if isinstance(prompt.image, bytes) else prompt.image
    return {"messages": prompt_messages(prompt), "images": [image], "solution": prompt.ground_truth,
            "reward_model": {"style": "rule", "ground_truth": prompt.ground_truth},
            "extra_info": extra_info(prompt), "data_source": DATA_SOURCE}


def verl_schema(embedded: bool):
    """The verl rows' Arrow schema, spelled out: inferred per file, a column that is null in one split (no
    rejection reason in test, say) and a string in the other makes verl's `concatenate_datasets` of train and
    test fail ("features can't be aligned")."""
    import pyarrow as pa

    text, number, boxes = pa.string(), pa.int64(), pa.list_(pa.list_(pa.int64()))
    per_r = pa.struct([("resolution", number), ("status", text), ("reason", text), ("direct", pa.bool_()),
                       ("zooms", number), ("boxes", boxes), ("answered", text)])
    difficulty = pa.struct([("per_resolution", pa.list_(per_r)), ("measured", number), ("solved", number),
                            ("direct_at", pa.list_(number)), ("min_zooms", number), ("pass_rate", pa.float64()),
                            ("samples", number)])
    create = pa.struct([("image", text), ("image_path", text), ("question", text), ("ground_truth", text)])
    tool = pa.struct([("create_kwargs", create), ("execute_kwargs", pa.struct([("image_path", text)]))])
    info = pa.struct([("split", text), ("index", number), ("answer", text), ("question", text),
                      ("options", pa.list_(text)), ("option_text", text), ("need_tools_kwargs", pa.bool_()),
                      ("tools_kwargs", pa.struct([(cof_format.TOOL_NAME, tool)])), ("task_id", text),
                      ("question_type", text), ("source", text), ("trust", text), ("resolution", number),
                      ("image_size", pa.list_(number)), ("gt_boxes", boxes), ("difficulty", difficulty)])
    image = pa.struct([("bytes", pa.binary())] if embedded else [("image", text)])
    return pa.schema([("data_source", text), ("agent_name", text),
                      ("prompt", pa.list_(pa.struct([("role", text), ("content", text)]))),
                      ("images", pa.list_(image)), ("ability", text),
                      ("reward_model", pa.struct([("style", text), ("ground_truth", text)])), ("extra_info", info)])


def write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = verl_schema(embedded="bytes" in rows[0]["images"][0])
    with AtomicFile(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    writer = RecordWriter(path)
    for row in rows:
        writer.write(row)
    writer.close()


@dataclass(frozen=True)
class RLFormat:
    """An RL layout: how a prompt becomes a row and how a split's rows are written (`<split><suffix>`)."""

    name: str
    suffix: str
    row: Callable[[Prompt], dict]
    write: Callable[[Path, list[dict]], None]
    needs: tuple[str, ...] = ()  # modules of the `data` extra it writes with

    @property
    def usage(self) -> str:
        """How to train on it (`resources/cards/<name>.md`)."""
        return (resources.CARDS / f"{self.name}.md").read_text(encoding="utf-8").removesuffix("\n")

    def export(self, store: RunStore, manifest: Manifest, out_dir: Path, options: RLOptions, jobs: int = 1) -> dict:
        return export_tasks(self, store, manifest, out_dir, options, jobs)


VERL = RLFormat("verl", ".parquet", verl_row, write_parquet, ("pyarrow",))
SWIFT_GRPO = RLFormat("swift-grpo", ".jsonl", swift_row, write_jsonl)
FORMATS = {f.name: f for f in (VERL, SWIFT_GRPO)}


def parse_band(text: str) -> tuple[float, float]:
    """`LO..HI` (fractions, LO <= HI) as a pair; ConfigError naming the flag otherwise."""
    try:
        low, high = (float(part) for part in text.split(".."))
    except ValueError:
        raise ConfigError(f"--keep-pass-rate {text!r} is not LO..HI; pass e.g. 0.1..0.9") from None
    if not 0 <= low <= high <= 1:
        raise ConfigError(f"--keep-pass-rate {text!r}: need 0 <= LO <= HI <= 1; pass e.g. 0.1..0.9")
    return low, high


def difficulty_of(trajectories: list[Trajectory]) -> dict:
    """What the run measured for one task, per R: answered directly, the verified chain's zooms and boxes (frame
    pixels at that R), accepted or why not; and the summary a selection filters on."""
    per_r = []
    for t in sorted(trajectories, key=lambda t: t.view.resolution):
        accepted = t.status == "accepted"
        per_r.append({"resolution": t.view.resolution, "status": t.status, "reason": t.reason,
                      "direct": accepted and not t.needs_zoom, "zooms": len(t.chain) if accepted else None,
                      "boxes": [list(step.box) for step in t.chain] if accepted else [],
                      "answered": t.verdict.predicted if t.verdict else None})
    solved = [r for r in per_r if r["status"] == "accepted"]
    return {"per_resolution": per_r, "measured": len(per_r), "solved": len(solved),
            "direct_at": [r["resolution"] for r in per_r if r["direct"]],
            "min_zooms": min((r["zooms"] for r in solved), default=None),
            "pass_rate": None, "samples": None}


UNTRUSTED = "untrusted: a synthesized answer no chain verified"


def trust(task: Task, difficulty: dict) -> tuple[str | None, str | None]:
    """(why the task's ground truth can be rewarded against, None) or (None, why not): verified by a chain at some
    R, confirmed by the consistency check, or given with the question; a synthesized answer nothing confirmed is
    not trusted."""
    if not (task.answer or "").strip():
        return None, "no ground truth"
    if difficulty["solved"]:
        return "verified", None
    if task.agreement is not None:
        return "consistency", None
    return (None, UNTRUSTED) if task.source in SYNTHESIZED else ("given", None)


def _frame(embed: bool, files: ImageFiles | None, target: str, frames: FrameSource, trajectory: Trajectory):
    """The task's image as the student `target` sees it (written as a content-addressed PNG, or encoded); runs in
    the export's workers."""
    frame = TARGETS[target].frame(frames, trajectory)
    if embed:
        return image_to_png_bytes(frame, PNG_LEVEL), frame.size
    return files.add(frame)[0], frame.size


def export_tasks(form: RLFormat, store: RunStore, manifest: Manifest, out_dir: Path, options: RLOptions,
                 jobs: int = 1) -> dict:
    """Every task of the run with a trusted ground truth as one row of `form`, split train/test by a hash of the
    task id (stable when the run grows), for the student `options.target`; returns the export report (the exporter
    writes it and the card)."""
    by_task: dict[str, list[Trajectory]] = {}
    for trajectory in store.trajectories():
        by_task.setdefault(trajectory.task.id, []).append(trajectory.model_copy(update={"steps": []}))

    skipped: list[dict] = []
    todo = []
    for task_id, trajectories in by_task.items():
        difficulty = difficulty_of(trajectories)
        why, why_not = trust(trajectories[0].task, difficulty)
        if why_not:
            skipped.append({"id": task_id, "reason": why_not})
            continue
        largest = max(trajectories, key=lambda t: t.view.resolution)
        todo.append((largest, (largest, difficulty, why)))

    files = None if options.embed_images else ImageFiles(out_dir, absolute_paths=True)
    if files is not None:
        (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    prompts: list[Prompt] = []
    window = 1 if options.embed_images else WINDOW
    make = partial(_frame, options.embed_images, files, options.target)
    for (trajectory, difficulty, why), made in replayed(todo, make, manifest, jobs, window):
        if isinstance(made, ReplayError):
            skipped.append({"id": trajectory.task.id, "reason": str(made)})
            continue
        image, size = made
        prompts.append(Prompt(trajectory.task, image, size, trajectory.view.resolution, difficulty, why,
                              TARGETS[options.target]))

    pass_rates = None
    if options.pass_rate is not None:
        pass_rates = measure_pass_rates(prompts, options.pass_rate)
        prompts, dropped = keep_band(prompts, options.pass_rate.band)
        skipped += dropped

    splits = split_prompts(prompts, options.test_fraction)
    data_files = {}
    for split, members in splits.items():
        if members:
            data_files[split] = f"{split}{form.suffix}"
            form.write(out_dir / data_files[split], [form.row(p) for p in members])

    return {
        "format": form.name, "target": options.target, "data_files": data_files,
        "tasks": len(by_task), "samples": len(prompts), **{split: len(m) for split, m in splits.items()},
        "skipped": len(skipped), "skipped_tasks": skipped,
        "skip_reasons": dict(Counter(s["reason"] for s in skipped).most_common()),
        "embed_images": options.embed_images, "test_fraction": options.test_fraction,
        "image": "the working frame at the task's largest measured R",
        "difficulty": summarise(prompts), "pass_rate": pass_rates,
        "task_sources": dict(Counter(p.task.source for p in prompts).most_common()),
    }


def split_prompts(prompts: list[Prompt], test_fraction: float) -> dict[str, list[Prompt]]:
    """The prompts of each split, by a hash of the task id (stable when the run grows); sets each one's split and
    index."""
    splits: dict[str, list[Prompt]] = {name: [] for name in SPLITS}
    for prompt in prompts:
        prompt.split = "test" if int(short_hash("split", prompt.task.id), 16) < test_fraction * 16 ** 16 else "train"
        prompt.index = len(splits[prompt.split])
        splits[prompt.split].append(prompt)
    return splits


def summarise(prompts: list[Prompt]) -> dict:
    """The difficulty of the exported tasks: per R (direct, zoom, rejected), tasks by fewest zooms a verified chain
    needed ("never" for none), and by trust."""
    per_r: dict[int, Counter] = {}
    for prompt in prompts:
        for row in prompt.difficulty["per_resolution"]:
            kind = "rejected" if row["status"] != "accepted" else "direct" if row["direct"] else "zoom"
            per_r.setdefault(row["resolution"], Counter())[kind] += 1
    zooms = Counter("never" if p.difficulty["min_zooms"] is None else str(p.difficulty["min_zooms"]) for p in prompts)
    return {"per_resolution": {str(r): {k: c[k] for k in ("direct", "zoom", "rejected")} for r, c in sorted(per_r.items())},
            "min_zooms": dict(sorted(zooms.items())), "trust": dict(Counter(p.trust for p in prompts).most_common())}


def measure_pass_rates(prompts: list[Prompt], settings: PassRate) -> dict:
    """Sample `settings.samples` episodes of eval's CoF loop per prompt, on the exported frame, as eval runs the
    prompt's student, scored by eval's rules; each prompt's `difficulty` gets `pass_rate` (None when every episode
    failed) and `samples`."""
    model = chat_model(settings.model)
    episode_settings = EvalSettings()
    gate = asyncio.Semaphore(max(1, settings.concurrency // settings.samples))  # prompts in flight, frames held

    async def one(prompt: Prompt, frame: Image.Image) -> bool | None:
        try:
            episode = await run_episode(model, frame, prompt.task.question, prompt.task.options, episode_settings,
                                        temperature=settings.temperature, target=prompt.student)
        except Exception:  # a server that fails after its retries: this sample is not measured
            return None
        score = score_by_rules(episode.answer, prompt.task.options, prompt.task.answer or "")
        return bool(score and score.correct)

    async def rate(prompt: Prompt) -> list[bool | None]:
        async with gate:
            frame = await asyncio.to_thread(_open, prompt.image)
            return list(await asyncio.gather(*(one(prompt, frame) for _ in range(settings.samples))))

    async def measure() -> list[list[bool | None]]:
        try:
            return list(await asyncio.gather(*(rate(prompt) for prompt in prompts)))
        finally:
            await model.aclose()

    histogram: Counter = Counter()
    for prompt, outcomes in zip(prompts, asyncio.run(measure())):
        done = [o for o in outcomes if o is not None]
        share = round(sum(done) / len(done), 4) if done else None
        prompt.difficulty.update(pass_rate=share, samples=len(done))
        histogram["unmeasured" if share is None else f"{min(math.floor(share * 10), 9) / 10:.1f}"] += 1
    return {"model": settings.model.model, "samples": settings.samples,
            "temperature": settings.temperature, "band": list(settings.band) if settings.band else None,
            "histogram": dict(sorted(histogram.items()))}


def keep_band(prompts: list[Prompt], band: tuple[float, float] | None) -> tuple[list[Prompt], list[dict]]:
    """The prompts whose pass rate lies in `band` (inclusive), and why each other one was dropped."""
    if band is None:
        return prompts, []
    kept, dropped = [], []
    for prompt in prompts:
        rate = prompt.difficulty["pass_rate"]
        if rate is not None and band[0] <= rate <= band[1]:
            kept.append(prompt)
        else:
            dropped.append({"id": prompt.task.id, "reason": "pass rate outside the band", "pass_rate": rate})
    return kept, dropped


def read_rows(path: Path) -> list[dict]:
    """The rows of one RL data file (`.parquet` or `.jsonl`)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_export(folder: Path) -> list[str]:
    """What a trainer would trip on in an RL export, one line each (empty: none): a data file that is missing, an
    image that does not open, `<image>` placeholders that do not match the images, a missing tool image, an empty
    ground truth."""
    report = json.loads((Path(folder) / "export_report.json").read_text(encoding="utf-8"))
    problems = []
    for name in report["data_files"].values():
        path = Path(folder) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        for n, row in enumerate(read_rows(path)):
            where = f"{name} row {n}"
            messages = row.get("prompt") or row.get("messages") or []
            images = [i.get("bytes") or i.get("image") if isinstance(i, dict) else i for i in row["images"]]
            if sum(m["content"].count(cof_format.IMAGE) for m in messages) != len(images):
                problems.append(f"{where}: the <image> placeholders do not match its {len(images)} images")
            for image in images:
                try:
                    _open(_decoded(image))
                except (OSError, ValueError) as exc:
                    shown = repr(image) if isinstance(image, str) and not image.startswith("data:") else "(embedded)"
                    problems.append(f"{where}: image {shown} does not open ({exc})")
            tool = row["extra_info"]["tools_kwargs"][cof_format.TOOL_NAME]["create_kwargs"]
            if not tool.get("image"):
                problems.append(f"{where}: no image for the zoom tool")
            if not str(row["reward_model"]["ground_truth"]).strip():
                problems.append(f"{where}: empty ground truth")
    return problems


def _decoded(image: str | bytes) -> str | bytes:
    """A row's image as `_open` takes it: a path, or PNG bytes from a data URI."""
    if isinstance(image, str) and image.startswith("data:"):
        return base64.b64decode(image.split(",", 1)[1])
    return image.removeprefix("file://") if isinstance(image, str) else image


def _open(image: str | bytes) -> Image.Image:
    with Image.open(BytesIO(image) if isinstance(image, bytes) else image) as opened:
        return opened.convert("RGB")


def card(report: dict, form: RLFormat) -> str:
    """The dataset card of an RL export: what the rows are, how difficulty was measured, how to train."""
    summary = report["difficulty"]
    rows = ["| R | direct | zoom | rejected |", "| --- | --- | --- | --- |"]
    rows += [f"| {r} | {c['direct']} | {c['zoom']} | {c['rejected']} |" for r, c in summary["per_resolution"].items()]
    zooms = ", ".join(f"{k}: {v}" for k, v in summary["min_zooms"].items()) or "none"
    rate = report["pass_rate"]
    parts = [
        f"# mmcof RL prompts ({form.name})",
        "GRPO prompts made by mmcof-gen from the TASKS of a run (not its chains): one row per task, the working "
        "frame at its largest measured R as `images[0]`, the CoF system prompt with the zoom tool, the question "
        "with the format instruction, and the verified ground truth (the option letter for multiple choice).",
        f"- prompts: **{report['samples']}** (train {report['train']}, test {report['test']}) of {report['tasks']} "
        f"tasks; skipped {report['skipped']} ({', '.join(f'{k}: {v}' for k, v in report['skip_reasons'].items()) or 'none'})\n"
        f"- data files: {', '.join(f'`{f}`' for f in report['data_files'].values())}; images "
        f"{'embedded' if report['embed_images'] else 'as absolute file paths under images/'}\n"
        f"- ground truth trusted as: {', '.join(f'{k} ({v})' for k, v in summary['trust'].items()) or 'none'}\n"
        f"- run config hash: `{report['config_hash']}`; mmcof-gen {report['package_version']}",
        "## How to train\n" + form.usage + ("" if report["test"] else
                                            f"\n\nThis export has no test split (`--test-fraction "
                                            f"{report['test_fraction']}` of {report['samples']} prompts): re-export with "
                                            "a larger one, or validate on the train file."),
        "## Difficulty (measured by the run, per task and R; `extra_info.difficulty`)\n" + "\n".join(rows)
        + f"\n\nFewest zooms a verified chain needed, tasks: {zooms}.",
    ]
    if rate:
        parts.append(f"## Pass rate\n{rate['samples']} samples at temperature {rate['temperature']} of `{rate['model']}` "
                     f"per task (eval's loop and rules); band kept: {rate['band']}; tasks by pass rate (bin start): "
                     + ", ".join(f"{k}: {v}" for k, v in rate["histogram"].items()))
    licences = report["sources"]["licence_files"]
    parts.append("## Sources and licences\n"
                 f"Images come from `{report['sources']['images']}`; frames derived from them carry their licence, "
                 "so check it before you publish or train on this data. "
                 + (f"Licence files found beside the images: {', '.join(f'`{f}`' for f in licences)}."
                    if licences else "No licence file was found beside the images."))
    return "\n\n".join(parts) + "\n"
