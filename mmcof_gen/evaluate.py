"""`mmcof-gen eval`: a chain-of-focus model on a V*-style benchmark, at several resolution budgets.

The loop is the Chain-of-Focus release's V* loop (`eval/vstar/vllm_inference.py`), with our crop function
and working frame: the system prompt declares the zoom tool; the user turn is the working frame and
`Question: ...` + FORMAT_SUFFIX; the model generates greedily (at most 512 new tokens); a reply with a
`<tool_call>` gets the zoom of the WORKING FRAME (never of a previous crop) back as a user turn (the crop +
FORMAT_SUFFIX); any other reply ends the episode and its last `<answer>` is the answer. At most 6
generations and 6 images. Ours: an invalid call (bad JSON, box outside the frame) gets a text error back
instead of the whole frame; several resolutions; a no-tool baseline (`baseline_no_zoom`).

Two protocols (docs/eval.md): `mmcof` (the default, above) and `cof-release`, the published V* protocol to
the letter (`cof_release`: V* text verbatim, the release's tool-call handling, first-answer extraction,
rule scoring and judge, full JPEG decoding; its R=3840 row is the one comparable with published numbers,
when the run is whole, error-free and its image inputs were checked equal to the release's: `not_comparable`).
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
from typing import Annotated, Literal

from PIL import Image
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mmcof_gen import benchmarks, cof_format, cof_release, resources
from mmcof_gen.benchmarks.embedded import local_image
from mmcof_gen.benchmarks.table import write_tables
from mmcof_gen.config import ImagesConfig, valid_resolutions
from mmcof_gen.conventions import CONVENTIONS, read_box
from mmcof_gen.errors import ConfigError
from mmcof_gen.targets import DEFAULT_TARGET, TARGETS, Target, student_target
from mmcof_gen.extras import require
from mmcof_gen.imaging import MAX_ZOOM_PIXELS, MIN_PIXELS, file_sha256, frame_from_image, image_size, load_image
from mmcof_gen.models.chat import ChatError, ChatMessage, ChatModel, ChatModelConfig, chat_model
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Box
from mmcof_gen.scoring import Score
from mmcof_gen.store import read_jsonl, repair_torn_tail, write_json_atomic
from mmcof_gen.tasks.vstar import BenchItem

PROMPTS = Prompts(resources.prompts("eval"))
TOOL_RESULT_TEXT = cof_format.TOOL_RESULT.removeprefix(cof_format.IMAGE)  # what follows the crop image
RESULTS, REPORT, PLOT, SETTINGS = "results.jsonl", "report.json", "report.png", "eval.json"
Mode = Literal["cof", "no_zoom"]
Protocol = Literal["mmcof", "cof-release"]
COMPARABLE_RESOLUTION = 3840  # the only budget the release evaluates at
RELEASE_LIMITS = {"max_generations": 6, "max_images": 6, "max_new_tokens": 512}  # the release's loop


def known_target(name: str | None) -> str | None:
    if name is not None and name not in TARGETS:
        raise ValueError(f"unknown target {name!r}; one of: {', '.join(TARGETS)}")
    return name


class EvalSettings(BaseModel):
    """What changes the numbers; a results folder made with other settings is refused, never mixed."""

    model_config = ConfigDict(extra="forbid")
    protocol: Protocol = Field("mmcof", description="mmcof: this project's (strict calls, lenient rules); "
                                                    "cof-release: the published V* protocol to the letter")
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


def first_messages(frame: Image.Image, question: str, options: list[str] | None, mode: Mode,
                   text: str | None = None, system_prompt: str = cof_format.SYSTEM_PROMPT) -> list[ChatMessage]:
    """System + first user turn: the CoF prompt with the tool (`system_prompt`: the student's own declaration of
    it), or (baseline) a plain assistant, no tool.

    `text` (cof-release): the benchmark's question text, sent verbatim instead of being rebuilt."""
    if text is not None:
        return [ChatMessage("system", cof_format.SYSTEM_PROMPT),
                ChatMessage("user", cof_release.question_text(text), [frame])]
    if mode == "no_zoom":
        return [ChatMessage("system", PROMPTS.render("direct_system")),
                ChatMessage("user", cof_format.question_text(question, options), [frame])]
    return [ChatMessage("system", system_prompt),
            ChatMessage("user", cof_format.question_text(question, options) + cof_format.FORMAT_SUFFIX, [frame])]


def zoom_call(reply: str, frame: Image.Image, target: Target) -> tuple[Box, dict]:
    """(the box in frame pixels, the arguments) of the reply's first tool call, read in the box convention of
    the model's `target` (Qwen3-VL: 0-1000); ValueError (the reason) when invalid."""
    call = cof_format.parse_tool_call(reply)
    if call is None:
        raise ValueError("the <tool_call> has no closing </tool_call>")
    return read_box(call["arguments"]["bbox_2d"], CONVENTIONS[target.boxes], *frame.size), call["arguments"]


def model_target(model: ChatModel, name: str | None = None) -> Target:
    """The student family of the evaluated model (its frame size, tool prompt, box convention and crop rule): the
    target `name` (`eval --target`, for a fine-tune whose config and name do not tell), else as its config or
    name tells (`targets.student_target`)."""
    return TARGETS[name] if name else student_target(model.name.partition(":")[2] or model.name)


async def run_episode(model: ChatModel, frame: Image.Image, question: str, options: list[str] | None,
                      settings: EvalSettings, mode: Mode = "cof", text: str | None = None,
                      temperature: float = 0.0, target: Target = TARGETS[DEFAULT_TARGET]) -> Episode:
    """The CoF inference loop on one working frame (module docstring); the baseline is one plain reply. Each
    call is read and executed as the `target` model's own tool does it. `temperature` > 0 samples (RL export's
    pass rate over k samples); eval itself decodes greedily."""
    release = settings.protocol == "cof-release"
    messages = first_messages(frame, question, options, mode, text if release else None, target.system_prompt)
    episode = Episode()
    images = 1
    shown = [frame]  # the conversation's images, which a call's img_idx indexes
    for _ in range(1 if mode == "no_zoom" else settings.max_generations):
        episode.max_images = max(episode.max_images, images)
        completion = await model.complete(messages, max_tokens=settings.max_new_tokens, temperature=temperature)
        reply = completion.text
        episode.replies.append(reply)
        episode.tokens += completion.completion_tokens
        messages.append(ChatMessage("assistant", reply))
        if mode == "no_zoom":
            episode.answer = cof_format.extract_answer(reply) or reply.strip() or None
            break
        if "<tool_call>" not in reply:  # as the release: a reply with any tool call is a zoom turn
            episode.answer = cof_release.extract_answer(reply) if release else cof_format.extract_answer(reply)
            break
        if len(episode.replies) == settings.max_generations:
            episode.stop = "generation_limit"
            break
        if release:
            image, box, bad = await asyncio.to_thread(cof_release.zoom, frame, reply)
            episode.zooms += [tuple(round(v) for v in box)] if box else []  # the record keeps whole pixels
            episode.bad_calls += [bad] if bad else []
            images += 1
            messages.append(ChatMessage("user", TOOL_RESULT_TEXT, [image]))
            continue
        try:
            box, arguments = zoom_call(reply, frame, target)
            crop = None if images == settings.max_images else await asyncio.to_thread(target.crop, shown, arguments)
        except ValueError as exc:  # parse_tool_call's reasons, InvalidBox
            episode.bad_calls.append(str(exc))
            error = PROMPTS.render("tool_error", reason=exc, width=frame.width, height=frame.height)
            messages.append(ChatMessage("user", error + cof_format.FORMAT_SUFFIX))
            continue
        if crop is None:
            episode.stop = "image_limit"
            break
        episode.zooms.append(box)
        images += 1
        shown.append(crop)
        messages.append(ChatMessage("user", TOOL_RESULT_TEXT, [crop]))
    episode.stop = episode.stop or ("answer" if episode.answer else "no_answer")
    if release and episode.answer is None:
        episode.answer = ""  # the release judges an episode without an answer as the empty answer
    return episode


async def evaluate_one(model: ChatModel, item: BenchItem, resolution: int, mode: Mode, settings: EvalSettings,
                       judge: ChatModel | None) -> EvalRecord:
    """One episode as a record; a failure (unreadable image, server down after retries) is recorded, not raised."""
    base = dict(id=record_id(item, resolution, mode), item=item.id, category=item.category, resolution=resolution,
                mode=mode, expected=item.answer)
    start = time.perf_counter()
    try:
        target = model_target(model, settings.target)
        with local_image(item.image) as path:  # an image inside the benchmark file is decoded for this episode only
            size = await asyncio.to_thread(image_size, path, settings.max_pixels)
            if settings.protocol == "cof-release":  # the release decodes the whole JPEG, then resizes
                frame = await asyncio.to_thread(
                    lambda: frame_from_image(load_image(path, settings.max_pixels), resolution))
            else:
                frame = await asyncio.to_thread(target.make_frame, path, resolution, settings.max_pixels)
        if settings.protocol == "cof-release":
            episode = await run_episode(model, frame, item.question, item.options, settings, mode, item.text)
            verdict = await score_release(item, episode.answer, judge)
        else:
            episode = await run_episode(model, frame, item.question, item.options, settings, mode, target=target)
            verdict = await benchmarks.score_answer(item, episode.answer, judge, PROMPTS)
    except Exception as exc:  # one bad sample never kills a run
        return EvalRecord(**base, error=f"{type(exc).__name__}: {exc}", stop="error",
                          seconds=round(time.perf_counter() - start, 3))
    return EvalRecord(**base, frame_size=frame.size, image_size=size, predicted=episode.answer, correct=verdict.correct,
                      method=verdict.method, generations=len(episode.replies), max_images=episode.max_images,
                      tokens=episode.tokens, zooms=episode.zooms, bad_calls=episode.bad_calls, stop=episode.stop,
                      replies=episode.replies, seconds=round(time.perf_counter() - start, 3))


async def score_release(item: BenchItem, predicted: str, judge: ChatModel) -> Score:
    """The release's scoring: its rules on the letter, else its judge (which sees the bare letter)."""
    decided = cof_release.score_by_rules(predicted, item.label, item.text)
    if decided is not None:
        return Score(decided, "rule")
    prompt = cof_release.judge_prompt(item.text, item.label, predicted)
    reply = await judge.complete([ChatMessage("system", cof_release.JUDGE_SYSTEM), ChatMessage("user", prompt)],
                                 max_tokens=None, temperature=0.0)
    return Score(cof_release.read_judgement(reply.text), "judge")


def decoding_of(model: ChatModel, settings: EvalSettings) -> dict | None:
    """The decoding parameters every request of the model carries (None for a model without a config)."""
    config = getattr(model, "config", None)
    return config.decoding(settings.max_new_tokens, 0.0) if isinstance(config, ChatModelConfig) else None


def check_protocol(model: ChatModel, items: list[BenchItem], settings: EvalSettings, judge: ChatModel | None) -> None:
    """cof-release needs what the release had: V*'s question texts, a judge, and plain greedy decoding."""
    if settings.protocol != "cof-release":
        return
    if any(item.text is None or not item.options for item in items):
        raise ConfigError("--protocol cof-release sends V*'s question text verbatim: pass a --bench folder (or file) "
                          "with test_questions.jsonl, as the V* dataset ships it")
    if settings.target not in (None, DEFAULT_TARGET):
        raise ConfigError(f"--protocol cof-release evaluates in the release's {DEFAULT_TARGET} convention; drop "
                          f"--target {settings.target} or use --protocol mmcof")
    if settings.baseline_no_zoom:
        raise ConfigError("--protocol cof-release has no no-zoom baseline (the release has none); "
                          "drop --baseline-no-zoom")
    if judge is None:
        raise ConfigError("--protocol cof-release sends every answer its rules cannot score to an LLM judge: pass "
                          "--judge-endpoint URL --judge-model NAME")
    decoding = decoding_of(model, settings)
    if decoding and (decoding.get("top_p") != 1.0 or decoding.get("repetition_penalty") != 1.0):
        raise ConfigError(f"--protocol cof-release decodes greedily with top_p 1.0 and repetition_penalty 1.0; "
                          f"the model config says {decoding}")
    config = getattr(judge, "config", None)
    if isinstance(config, ChatModelConfig) and config.decoding(None, 0.0) != {"temperature": 0.0}:
        raise ConfigError(f"--protocol cof-release sends the judge only temperature 0, as the release does; its "
                          f"config sends {config.decoding(None, 0.0)}: build it with cof_release.judge_config")


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
            "target": model_target(model, settings.target).name, "protocol": settings.protocol, "decoding": decoding_of(model, settings), "model_identity": identity(model),
            "judge_identity": identity(judge), "prompts": request_prompts(),
            "settings": settings.model_dump(exclude={"concurrency", "target"})}  # the target as resolved, above


def not_comparable(settings: EvalSettings, records: list[EvalRecord], full: bool,
                   image_tokens: dict | None) -> list[str]:
    """Why the R=3840 rows cannot stand next to the published numbers (none: they can)."""
    reasons = []
    if settings.protocol != "cof-release":
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
    token, Qwen3-VL: 32x32) means the server downsizes it, and that R is refused. Under cof-release nothing is
    widened: the release ran with the checkpoint's own processor limits, so each R's count must equal what those
    give (`cof_release.image_tokens`; a server widened as the default protocol needs is refused), and is marked
    `release: true` when it was checked so. Returns, per R, the frame's size and its image tokens (None: the
    server does not count them)."""
    release = settings.protocol == "cof-release"
    target = model_target(model, settings.target)
    with local_image(item.image) as path:
        frames = {r: await asyncio.to_thread(target.make_frame, path, r, settings.max_pixels)
                  for r in settings.resolutions}
    processor = getattr(getattr(model, "processor", None), "image_processor", None)
    if processor is not None:
        size = processor.size
        if not release:
            processor.size = {"shortest_edge": min(size["shortest_edge"], MIN_PIXELS),
                              "longest_edge": max(size["longest_edge"], MAX_ZOOM_PIXELS)}
        merge = getattr(processor, "merge_size", 1) ** 2
        found = {str(r): {"frame": list(f.size),
                          "tokens": processor.get_number_of_image_patches(f.height, f.width) // merge}
                 for r, f in frames.items()}
        return _against_release(model, found) if release else found
    try:
        text_only = (await model.complete([ChatMessage("user", "?")], max_tokens=1)).prompt_tokens
    except ChatError:  # a server that refuses the probe is left to the episodes, which record why
        found = {str(r): {"frame": list(f.size), "tokens": None} for r, f in frames.items()}
        return _against_release(model, found) if release else found
    found = {}
    for resolution, frame in frames.items():
        with_frame = (await model.complete([ChatMessage("user", "?", [frame])], max_tokens=1)).prompt_tokens
        tokens = with_frame - text_only - 2 if with_frame > text_only else None  # 2: the vision start/end markers
        patches = frame.width * frame.height // (target.factor * target.factor)
        if tokens is not None and tokens < patches and not release:
            raise ConfigError(f"--resolutions {resolution}: {model.name} turns a {frame.width}x{frame.height} frame "
                              f"into {tokens} image tokens, not its {patches}: the server downsizes it (vLLM: serve "
                              f"with --mm-processor-kwargs '{{\"max_pixels\": {MAX_ZOOM_PIXELS}}}'), or drop {resolution}; "
                              f"a model that is no {target.title} student: pass --target")
        found[str(resolution)] = {"frame": list(frame.size), "tokens": tokens}
    return _against_release(model, found) if release else found


def _against_release(model: ChatModel, found: dict[str, dict]) -> dict[str, dict]:
    """cof-release: each counted R must give the model the release's image tokens; marks those checked."""
    for resolution, entry in found.items():
        expected = cof_release.image_tokens(*entry["frame"])
        if entry["tokens"] is not None and entry["tokens"] != expected:
            width, height = entry["frame"]
            raise ConfigError(f"--protocol cof-release: {model.name} turns the {width}x{height} frame of "
                              f"R={resolution} into {entry['tokens']} image tokens, the release's processor into "
                              f"{expected}: serve the model with its checkpoint's own image limits (no "
                              "--mm-processor-kwargs max_pixels), or use --protocol mmcof")
        entry["release"] = entry["tokens"] is not None
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
    if judge is not None and settings.protocol == "cof-release":
        judge = cof_release.judge_config(judge)
    chat, judging = chat_model(model), chat_model(judge) if judge else None
    check_protocol(chat, items, settings, judging)  # before the first request
    image_tokens = asyncio.run(check_image_tokens(chat, items[0], settings)) if items else None
    return evaluate(chat, items, settings, out, judging, bench=str(bench), image_tokens=image_tokens,
                    benchmark=benchmark, full=len(items) == len(every))
