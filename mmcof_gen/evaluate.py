"""`mmcof-gen eval`: a chain-of-focus model on a V*-style benchmark, at several resolution budgets.

The loop is the Chain-of-Focus release's V* loop (`eval/vstar/vllm_inference.py`), with our crop function
and working frame: the system prompt declares the zoom tool; the user turn is the working frame and
`Question: ...` + FORMAT_SUFFIX; the model generates greedily (at most 512 new tokens); a reply with a
`<tool_call>` gets the zoom of the WORKING FRAME (never of a previous crop) back as a user turn (the crop +
FORMAT_SUFFIX); any other reply ends the episode and its last `<answer>` is the answer. At most 6
generations and 6 images. Ours: an invalid call (bad JSON, box outside the frame) gets a text error back
instead of the whole frame; several resolutions; a no-tool baseline (`baseline_no_zoom`).

Each step where protocols differ is the protocol's, looked up by name in `eval_protocols.PROTOCOLS`
(docs/eval.md): `mmcof` (the default, above) and `cof-release`, the published V* protocol to the letter
(`cof_release`: V* text verbatim, the release's tool-call handling, first-answer extraction, rule scoring and
judge, full JPEG decoding; its R=3840 row is the one comparable with published numbers, when the run is whole,
error-free and its image inputs were checked equal to the release's: `not_comparable`).
Decoding is explicit on every request (greedy, top_p 1, repetition_penalty 1 unless the model config says
otherwise) and recorded with the protocol in `eval.json` and `report.json`.

Results stream to `<out>/results.jsonl` (one line per question x resolution x mode, flushed), so a killed
run resumes where it stopped (errored samples are retried); `report.json`, `report.png` summarise them. A
folder resumes only with the same fingerprint (`fingerprint`: every prompt file and setting a request depends
on), never into results made otherwise.

    report = evaluate(chat_model(config), load_bench(Path("vstar_bench")), EvalSettings(), Path("outputs/eval"))
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mmcof_gen import benchmarks, cof_format, resources
from mmcof_gen.benchmarks.embedded import local_image
from mmcof_gen.benchmarks.table import write_tables
from mmcof_gen.config import ImagesConfig, valid_resolutions
from mmcof_gen.errors import ConfigError
from mmcof_gen.eval_protocols import DEFAULT_PROTOCOL, PROTOCOLS, Mode
from mmcof_gen.extras import require
from mmcof_gen.imaging import MAX_ZOOM_PIXELS, MIN_PIXELS, file_sha256, image_size
from mmcof_gen.models.chat import ChatError, ChatMessage, ChatModel, ChatModelConfig, chat_model
from mmcof_gen.schema import Box, registered
from mmcof_gen.store import read_jsonl, repair_torn_tail, write_json_atomic
from mmcof_gen.targets import DEFAULT_TARGET, TARGETS, Target, student_target
from mmcof_gen.tasks.vstar import BenchItem

RESULTS, REPORT, PLOT, SETTINGS = "results.jsonl", "report.json", "report.png", "eval.json"
COMPARABLE_RESOLUTION = 3840  # the only budget the release evaluates at
RELEASE_LIMITS = {"max_generations": 6, "max_images": 6, "max_new_tokens": 512}  # the release's loop


def known_target(name: str | None) -> str | None:
    """`EvalSettings.target`: a target of the registry, or None (told by the model)."""
    return None if name is None else registered(name, TARGETS)


def known_protocol(name: str) -> str:
    return registered(name, PROTOCOLS)


class EvalSettings(BaseModel):
    """What changes the numbers; a results folder made with other settings is refused, never mixed."""

    model_config = ConfigDict(extra="forbid")
    protocol: Annotated[str, AfterValidator(known_protocol)] = Field(
        DEFAULT_PROTOCOL, description="eval_protocols.PROTOCOLS: mmcof, this project's (strict calls, lenient rules); "
                                      "cof-release, the published V* protocol to the letter")
    resolutions: Annotated[list[int], AfterValidator(valid_resolutions)] = Field(
        default_factory=lambda: [224, 448, 672, 1024, 1920, 3840])
    max_generations: int = Field(6, ge=1, description="model replies per episode (CoF eval: 6)")
    max_images: int = Field(6, ge=1, description="images in one request: the frame and the crops (CoF eval: 6)")
    max_new_tokens: int = Field(512, ge=1)
    max_pixels: int = Field(ImagesConfig().max_pixels, gt=0, description="decompression-bomb guard")
    baseline_no_zoom: bool = Field(False, description="also ask each question without tools, in one reply")
    concurrency: int = Field(8, ge=1, description="episodes in flight (not part of the fingerprint)")
    target: Annotated[str | None, AfterValidator(known_target)] = Field(
        None, description="the student convention the model is evaluated in (targets.TARGETS: its frame size, tool "
                          "prompt, box convention, crop rule); none: told by the model's config or name")


class EvalRecord(BaseModel):
    """One episode: a question at one resolution in one mode, with its score and its counters."""

    id: str
    item: str
    category: str
    resolution: int
    mode: Mode
    frame_size: tuple[int, int] = (0, 0)
    image_size: tuple[int, int] = Field((0, 0), description="the original image, upright (zoom boxes map back to it)")
    expected: str | None = None
    predicted: str | None = None
    correct: bool = False
    method: str = ""
    generations: int = 0
    max_images: int = Field(0, description="images in the largest request of the episode")
    zooms: list[Box] = Field(default_factory=list, description="executed zoom boxes, frame pixels")
    bad_calls: list[str] = Field(default_factory=list, description="why each invalid tool call was refused")
    tokens: int = Field(0, description="generated tokens, all replies")
    stop: str = Field("", description="answer | no_answer | generation_limit | image_limit | error")
    error: str | None = None
    replies: list[str] = Field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Episode:
    """What the loop did; counters are checked by tests and summarised by the report."""

    replies: list[str] = field(default_factory=list)
    answer: str | None = None
    zooms: list[Box] = field(default_factory=list)
    bad_calls: list[str] = field(default_factory=list)
    max_images: int = 0
    tokens: int = 0
    stop: str = ""


def record_id(item: BenchItem, resolution: int, mode: Mode) -> str:
    return f"{item.id}@{resolution}:{mode}"


def model_target(model: ChatModel, name: str | None = None) -> Target:
    """The student family of the evaluated model (its frame size, tool prompt, box convention and crop rule): the
    target `name` (`eval --target`, for a fine-tune whose config and name do not tell), else as its config or
    name tells (`targets.student_target`)."""
    return TARGETS[name] if name else student_target(model.name.partition(":")[2] or model.name)


async def run_episode(model: ChatModel, frame: Image.Image, question: str, options: list[str] | None,
                      settings: EvalSettings, mode: Mode = "cof", text: str | None = None,
                      temperature: float = 0.0, target: Target = TARGETS[DEFAULT_TARGET]) -> Episode:
    """The CoF inference loop on one working frame (module docstring), each step as `settings.protocol` takes it;
    the baseline is one plain reply. Each call is read and executed as the `target` model's own tool does it.
    `text`: the benchmark's question text; `temperature` > 0 samples (RL export's pass rate over k samples); eval
    itself decodes greedily."""
    protocol = PROTOCOLS[settings.protocol]
    messages = protocol.first_messages(frame, question, options, text, mode, target)
    episode = Episode()
    shown = [frame]  # the conversation's images, which a call's img_idx indexes
    for _ in range(1 if mode == "no_zoom" else settings.max_generations):
        episode.max_images = max(episode.max_images, len(shown))
        completion = await model.complete(messages, max_tokens=settings.max_new_tokens, temperature=temperature)
        reply = completion.text
        episode.replies.append(reply)
        episode.tokens += completion.completion_tokens
        messages.append(ChatMessage("assistant", reply))
        if mode == "no_zoom":
            episode.answer = cof_format.extract_answer(reply) or reply.strip() or None
            break
        if "<tool_call>" not in reply:  # as the release: a reply with any tool call is a zoom turn
            episode.answer = protocol.answer(reply)
            break
        if len(episode.replies) == settings.max_generations:
            episode.stop = "generation_limit"
            break
        zoom = await protocol.zoom(reply, frame, shown, target, room=len(shown) < settings.max_images)
        if zoom.turn is None:
            episode.stop = "image_limit"
            break
        episode.zooms += [zoom.box] if zoom.box else []
        episode.bad_calls += [zoom.problem] if zoom.problem else []
        shown += zoom.turn.images
        messages.append(zoom.turn)
    episode.stop = episode.stop or ("answer" if episode.answer else "no_answer")
    if episode.answer is None:
        episode.answer = protocol.unanswered
    return episode


async def evaluate_one(model: ChatModel, item: BenchItem, resolution: int, mode: Mode, settings: EvalSettings,
                       judge: ChatModel | None) -> EvalRecord:
    """One episode as a record; a failure (unreadable image, server down after retries) is recorded, not raised."""
    base = dict(id=record_id(item, resolution, mode), item=item.id, category=item.category, resolution=resolution,
                mode=mode, expected=item.answer)
    start = time.perf_counter()
    protocol = PROTOCOLS[settings.protocol]
    try:
        target = model_target(model, settings.target)
        with local_image(item.image) as path:  # an image inside the benchmark file is decoded for this episode only
            size = await asyncio.to_thread(image_size, path, settings.max_pixels)
            frame = await asyncio.to_thread(protocol.make_frame, path, resolution, settings.max_pixels, target)
        episode = await run_episode(model, frame, item.question, item.options, settings, mode, item.text,
                                    target=target)
        verdict = await protocol.score(item, episode.answer, judge)
    except Exception as exc:  # one bad sample never kills a run
        return EvalRecord(**base, error=f"{type(exc).__name__}: {exc}", stop="error",
                          seconds=round(time.perf_counter() - start, 3))
    return EvalRecord(**base, frame_size=frame.size, image_size=size, predicted=episode.answer, correct=verdict.correct,
                      method=verdict.method, generations=len(episode.replies), max_images=episode.max_images,
                      tokens=episode.tokens, zooms=episode.zooms, bad_calls=episode.bad_calls, stop=episode.stop,
                      replies=episode.replies, seconds=round(time.perf_counter() - start, 3))


def decoding_of(model: ChatModel, settings: EvalSettings) -> dict | None:
    """The decoding parameters every request of the model carries (None for a model without a config)."""
    config = getattr(model, "config", None)
    return config.decoding(settings.max_new_tokens, 0.0) if isinstance(config, ChatModelConfig) else None


def check_protocol(model: ChatModel, items: list[BenchItem], settings: EvalSettings, judge: ChatModel | None) -> None:
    """What the protocol needs of the run (cof-release: what the release had), before the first request."""
    PROTOCOLS[settings.protocol].check(items, settings.target, settings.baseline_no_zoom,
                                       decoding_of(model, settings), judge)


def request_prompts() -> dict[str, str]:
    """sha256[:16] of every prompt file an eval request is made of (the CoF format's and eval's own)."""
    return {f"{kind}/{path.name}": file_sha256(path)[:16] for kind in ("cof", "eval")
            for path in sorted(resources.prompts(kind).glob("*.txt"))}


def fingerprint(model: ChatModel, settings: EvalSettings, judge: ChatModel | None, bench: str) -> dict:
    """Everything a request or a score depends on: a results folder holding another fingerprint is refused."""
    def identity(chat: ChatModel | None) -> dict | str | None:
        config = getattr(chat, "config", None)
        return config.identity() if isinstance(config, ChatModelConfig) else getattr(chat, "name", None)

    return {"model": model.name, "bench": bench, "judge": judge.name if judge else None,
            "target": model_target(model, settings.target).name, "protocol": settings.protocol,
            "decoding": decoding_of(model, settings), "model_identity": identity(model),
            "judge_identity": identity(judge), "prompts": request_prompts(),
            "settings": settings.model_dump(exclude={"concurrency", "target"})}  # the target as resolved, above


def not_comparable(settings: EvalSettings, records: list[EvalRecord], full: bool,
                   image_tokens: dict | None) -> list[str]:
    """Why the R=3840 rows cannot stand next to the published numbers (none: they can)."""
    reasons = []
    if not PROTOCOLS[settings.protocol].comparable:
        reasons.append(f"protocol {settings.protocol}, not cof-release")
    if COMPARABLE_RESOLUTION not in settings.resolutions:
        reasons.append(f"no R={COMPARABLE_RESOLUTION}")
    changed = {k: v for k, v in RELEASE_LIMITS.items() if getattr(settings, k) != v}
    if changed:
        reasons.append(f"settings {changed} differ from the release's {RELEASE_LIMITS}")
    if not full:
        reasons.append("a part of the benchmark (--limit)")
    errors = sum(r.error is not None for r in records if r.resolution == COMPARABLE_RESOLUTION)
    if errors:
        reasons.append(f"{errors} error record(s) at R={COMPARABLE_RESOLUTION}")
    if (image_tokens or {}).get(str(COMPARABLE_RESOLUTION), {}).get("release") is not True:
        reasons.append(f"the image tokens at R={COMPARABLE_RESOLUTION} were not checked equal to the release's")
    return reasons


def summarize(records: list[EvalRecord], comparable: bool = False) -> list[dict]:
    """One row per (mode, resolution, category), plus category "all": accuracy, zoom rate, failures.

    `comparable` (the run was made as the published numbers were, `not_comparable`): its R=3840 rows are."""
    groups: dict[tuple[str, int, str], list[EvalRecord]] = {}
    for record in records:
        for category in dict.fromkeys(("all", record.category)):  # a record of category "all" counts once
            groups.setdefault((record.mode, record.resolution, category), []).append(record)
    rows = []
    for mode, resolution, category in sorted(groups, key=lambda key: (*key[:2], key[2] != "all", key[2])):
        group = groups[(mode, resolution, category)]
        n = len(group)
        rows.append({
            "mode": mode, "resolution": resolution, "category": category, "n": n,
            "accuracy": round(sum(r.correct for r in group) / n, 4),
            "zoom_rate": round(sum(bool(r.zooms) for r in group) / n, 4),
            "mean_zooms": round(sum(len(r.zooms) for r in group) / n, 3),
            "mean_tokens": round(sum(r.tokens for r in group) / n, 1),
            "no_answer": sum(r.stop in ("no_answer", "generation_limit", "image_limit") for r in group),
            "bad_call": sum(bool(r.bad_calls) for r in group),
            "errors": sum(r.error is not None for r in group),
            "judged": sum(r.method.startswith("judge") for r in group),
            "comparable": comparable and resolution == COMPARABLE_RESOLUTION,
        })
    return rows


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy (each mode) and zoom rate (CoF) against resolution, for all categories together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for mode in sorted({row["mode"] for row in rows}):
        mine = [row for row in rows if row["mode"] == mode and row["category"] == "all"]
        xs = [row["resolution"] for row in mine]
        axes.plot(xs, [row["accuracy"] for row in mine], marker="o", label=f"accuracy ({mode})")
        if mode == "cof":
            axes.plot(xs, [row["zoom_rate"] for row in mine], marker="s", linestyle="--", label="zoom rate (cof)")
    axes.set_xscale("log", base=2)
    resolutions = sorted({row["resolution"] for row in rows})
    axes.set_xticks(resolutions, [str(r) for r in resolutions])
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("resolution budget R (frame of about R x R pixels)")
    axes.set_ylabel("fraction of questions")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def evaluate(model: ChatModel, items: list[BenchItem], settings: EvalSettings, out: Path,
             judge: ChatModel | None = None, bench: str = "", image_tokens: dict | None = None,
             benchmark: benchmarks.Benchmark | None = None, full: bool = False) -> dict:
    """Run every (item, resolution, mode) not yet in `out`, then write the report and the results table
    (`results.md`, `results.csv`); returns the report.

    `image_tokens` (from `check_image_tokens`) goes into the report as it is; `benchmark` (default: the
    one of the items) scores the published figures; `full`: `items` are the whole benchmark (a condition of
    `comparable`)."""
    missing = [item.id for item in items if item.answer is None]
    if missing:
        raise ConfigError(f"--bench: {len(missing)} questions have no answer to score against (first: {missing[0]})")
    check_protocol(model, items, settings, judge)
    out = Path(out)
    made_with = fingerprint(model, settings, judge, bench)
    _open_results(out, made_with)
    done = {record.id: record for record in read_jsonl(out / RESULTS, EvalRecord)}
    modes: list[Mode] = ["cof", "no_zoom"] if settings.baseline_no_zoom else ["cof"]
    work = {record_id(item, r, mode): (item, r, mode) for item in items for r in settings.resolutions for mode in modes}
    todo = [args for key, args in work.items() if key not in done or done[key].error is not None]
    for record in asyncio.run(_run_all(model, todo, settings, judge, out / RESULTS)):
        done[record.id] = record
    records = [done[key] for key in work]
    reasons = not_comparable(settings, records, full, image_tokens)
    rows = summarize(records, comparable=not reasons)
    benchmark = benchmark or benchmarks.BENCHMARKS[items[0].bench if items else "vstar"]
    report = {**made_with, "image_tokens": image_tokens, "not_comparable": reasons, "rows": rows, "benchmark": {
        "name": benchmark.name, "title": benchmark.title(Path(bench)), "scoring": benchmark.scoring,
        "results": benchmarks.published(benchmark, records, {item.id: item for item in items})}}
    write_json_atomic(out / REPORT, report)
    write_tables(out, report)
    plot(rows, out / PLOT)
    return report


async def _run_all(model: ChatModel, todo: list, settings: EvalSettings, judge: ChatModel | None,
                   results: Path) -> list[EvalRecord]:
    semaphore = asyncio.Semaphore(settings.concurrency)

    async def bounded(item: BenchItem, resolution: int, mode: Mode) -> EvalRecord:
        async with semaphore:
            record = await evaluate_one(model, item, resolution, mode, settings, judge)
        _append(results, record)
        return record

    return await asyncio.gather(*(bounded(*work) for work in todo))


def _open_results(out: Path, fingerprint: dict) -> None:
    """Create `out`, or reopen it when it holds results made with the same model, bench and settings."""
    settings_path = out / SETTINGS
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pass a new folder for the results")
    if settings_path.exists():
        old = json.loads(settings_path.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(fingerprint)):
            changed = sorted(k for k in fingerprint if old.get(k) != json.loads(json.dumps(fingerprint[k])))
            raise ConfigError(f"--out {out} holds results of another evaluation ({', '.join(changed)} differ); "
                              "pass a new --out folder")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is not empty and holds no {SETTINGS}; pass a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(settings_path, fingerprint)
    repair_torn_tail(out / RESULTS)


def _append(path: Path, record: EvalRecord) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(record.model_dump_json() + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _check_server(model: ChatModelConfig, settings: EvalSettings) -> None:
    """A vLLM endpoint that cannot serve this evaluation is refused before the first episode."""
    from mmcof_gen.models.server_info import check_images, check_served, server_info

    info = server_info(model)
    if info is not None:
        check_served(info, model, "--served-model", settings.max_new_tokens, "max_new_tokens")
        check_images(model, settings.max_images, "--endpoint")


async def check_image_tokens(model: ChatModel, item: BenchItem, settings: EvalSettings) -> dict[str, dict]:
    """Make sure the model sees each frame (and crop) as eval made it, not resized again by its processor.

    In process: the processor's pixel bounds are widened to the zoom tool's (112^2 .. 3840^2), which holds
    every frame and crop, so nothing is resized. A server is asked: the prompt tokens of the first item's
    frame minus those of the same text alone; fewer than the frame's own patches (Qwen2.5-VL: 28x28 pixels a
    token, Qwen3-VL: 32x32) means the server downsizes it, and that R is refused. A protocol that does not need
    whole frames (cof-release: the release ran with the checkpoint's own processor limits) widens nothing and
    refuses nothing here; it checks the counts its own way (`checked_tokens`: each R's count must equal what the
    release's processor gives, marked `release: true` when checked so). Returns, per R, the frame's size and its
    image tokens (None: the server does not count them)."""
    protocol = PROTOCOLS[settings.protocol]
    target = model_target(model, settings.target)
    with local_image(item.image) as path:
        frames = {r: await asyncio.to_thread(target.make_frame, path, r, settings.max_pixels)
                  for r in settings.resolutions}
    processor = getattr(getattr(model, "processor", None), "image_processor", None)
    if processor is not None:
        found = _processor_tokens(processor, frames, protocol.whole_frames)
    else:
        found = await _server_tokens(model, frames, target, protocol.whole_frames)
    return protocol.checked_tokens(model.name, found)


def _processor_tokens(processor, frames: dict[int, Image.Image], widen: bool) -> dict[str, dict]:
    """Each frame's image tokens under an in-process processor (`widen`: to the zoom tool's pixel bounds first)."""
    if widen:
        size = processor.size
        processor.size = {"shortest_edge": min(size["shortest_edge"], MIN_PIXELS),
                          "longest_edge": max(size["longest_edge"], MAX_ZOOM_PIXELS)}
    merge = getattr(processor, "merge_size", 1) ** 2
    return {str(r): {"frame": list(f.size), "tokens": processor.get_number_of_image_patches(f.height, f.width) // merge}
            for r, f in frames.items()}


async def _server_tokens(model: ChatModel, frames: dict[int, Image.Image], target: Target,
                         whole: bool) -> dict[str, dict]:
    """Each frame's image tokens as the server counts them (None: it does not); `whole`: a frame the server
    downsizes is refused."""
    try:
        text_only = (await model.complete([ChatMessage("user", "?")], max_tokens=1)).prompt_tokens
    except ChatError:  # a server that refuses the probe is left to the episodes, which record why
        return {str(r): {"frame": list(f.size), "tokens": None} for r, f in frames.items()}
    found = {}
    for resolution, frame in frames.items():
        with_frame = (await model.complete([ChatMessage("user", "?", [frame])], max_tokens=1)).prompt_tokens
        tokens = with_frame - text_only - 2 if with_frame > text_only else None  # 2: the vision start/end markers
        patches = frame.width * frame.height // (target.factor * target.factor)
        if tokens is not None and tokens < patches and whole:
            raise ConfigError(f"--resolutions {resolution}: {model.name} turns a {frame.width}x{frame.height} frame "
                              f"into {tokens} image tokens, not its {patches}: the server downsizes it (vLLM: serve "
                              f"with --mm-processor-kwargs '{{\"max_pixels\": {MAX_ZOOM_PIXELS}}}'), or drop "
                              f"{resolution}; a model that is no {target.title} student: pass --target")
        found[str(resolution)] = {"frame": list(frame.size), "tokens": tokens}
    return found


def evaluate_bench(bench: Path, out: Path, settings: EvalSettings, model: ChatModelConfig,
                   judge: ChatModelConfig | None = None, limit: int | None = None, bench_format: str | None = None,
                   categories: list[str] | None = None) -> dict:
    """The `eval` command: recognise and load the benchmark (`benchmarks`), build the model (and judge), check
    what each R becomes in the model, evaluate, report."""
    require("data", "eval (its report.png)", ("matplotlib",))
    benchmark = benchmarks.detect(bench, bench_format)
    every = benchmark.load(Path(bench))
    items = benchmarks.select(every, categories, limit)
    if model.backend == "openai":
        _check_server(model, settings)
    chat = chat_model(model)
    judging = chat_model(PROTOCOLS[settings.protocol].judge_config(judge)) if judge else None
    check_protocol(chat, items, settings, judging)  # before the first request
    image_tokens = asyncio.run(check_image_tokens(chat, items[0], settings)) if items else None
    return evaluate(chat, items, settings, out, judging, bench=str(bench), image_tokens=image_tokens,
                    benchmark=benchmark, full=len(items) == len(every))
