"""The `mmcof-gen` command line: parse, load the config, call one function per command."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from mmcof_gen import extras, resources
from mmcof_gen.config import MAX_SIDE, MIN_SIDE, load_config, require_extras, valid_resolutions
from mmcof_gen.errors import ConfigError
from mmcof_gen.executors import EXECUTORS
from mmcof_gen.targets import DEFAULT_TARGET, TARGETS
from mmcof_gen.store import RunStore, StoreError

try:  # typer >= 0.20 vendors its own click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import UsageError

app = typer.Typer(
    help="Synthesize verified chain-of-focus (search and zoom) training data for vision-language models.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


class NothingMade(Exception):
    """The command ran but made nothing, or a check failed; printed as one line, exit code 1."""


OVERWRITE = ("Replace an output of another run at --out: first remove the files it recorded writing (and only "
             "those). Without it such a folder is refused.")


def registry_choice(registry: dict) -> Callable[[str], str]:
    """A flag's parser that accepts the names of `registry` as they are when the flag is read, so a part
    registered after this module was imported is a choice too."""
    def parse(value: str) -> str:
        if value not in registry:
            raise ValueError(f"{value!r} is not one of {', '.join(map(repr, registry))}.")
        return value

    return parse


class SourceKind(str, Enum):
    auto = "auto"
    folder = "folder"
    vstar = "vstar"


def _all_cores(jobs: Optional[int]) -> int:
    """--jobs, or every core this process may use when it is not given."""
    from mmcof_gen.parallel import default_jobs

    return jobs or default_jobs()


Pipeline = Annotated[Optional[str], typer.Option(
    help="Pipeline YAML file, or the name of a shipped pipeline (`mmcof-gen pipelines`; default: default); "
         "filter takes its `filter:` section.")]
Jobs = Annotated[Optional[int], typer.Option(
    min=1, callback=_all_cores,
    help="Processes that rebuild frames and crops (default: all cores); the output is the same for any N.")]


def _resolutions(value: str | None, command: str) -> list[int] | None:
    """`--resolutions`: every item an integer side between MIN_SIDE and MAX_SIDE (an empty item is a typo, not a
    default)."""
    if value is None:
        return None
    parts = value.split(",")
    if not all(part.strip() for part in parts):
        problem = "is empty" if not value.strip() else "has an empty item"
    elif not all(part.strip().isdigit() for part in parts):
        problem = "is not a comma-separated list of integers"
    elif not all(MIN_SIDE <= int(part) <= MAX_SIDE for part in parts):
        problem = f"has a side length outside {MIN_SIDE} to {MAX_SIDE}"
    else:
        return valid_resolutions([int(part) for part in parts])
    raise UserError(f"{command}: --resolutions {value!r} {problem}; give pixel budgets like 448,672,1024,1920")


@app.command()
def synthesize(
    images: Annotated[Path, typer.Option(help="Folder of images (searched recursively).", exists=True,
                                         file_okay=False, dir_okay=True, readable=True)],
    out: Annotated[Path, typer.Option(help="Run folder; re-running the same command resumes it.")] = Path("outputs/run"),
    config: Pipeline = None,
    questions: Annotated[Optional[Path], typer.Option(
        help="JSONL of questions (image, question, options?, answer?, bbox?); image paths relative to --images.",
        exists=True, dir_okay=False)] = None,
    coco: Annotated[Optional[Path], typer.Option(
        help="COCO-style annotations (images, annotations, categories): questions about small annotated objects; "
             "file_name relative to --images.", exists=True, dir_okay=False)] = None,
    source: Annotated[SourceKind, typer.Option(
        help="Where tasks come from when neither --questions nor --coco is given. auto: vstar when --images is in "
             "the V*-bench layout (test_questions.jsonl, or <category>/<name>.json beside each image), else folder; "
             "folder: bare images, tasks synthesised as tasks.kind says (ocr text, or vlm).")] = SourceKind.auto,
    exclude: Annotated[Optional[Path], typer.Option(
        help="Exclusion list (sha256 / path / file name / stem / phash:<hex> per line) or a folder of images to keep "
             "out (e.g. the benchmark); skipped images are recorded with the reason. Overrides tasks.exclude.",
        exists=True)] = None,
    resolutions: Annotated[Optional[str], typer.Option(help="Pixel budgets R (frames of about RxR), e.g. 448,672,1024,1920.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Process at most the first N images.")] = None,
    executor: Annotated[Optional[str], typer.Option(
        parser=registry_choice(EXECUTORS), metavar=f"<{'|'.join(EXECUTORS)}>",
        help="Where the agents run: local (threads in this process) or ray (actors; detectors shared and batched). "
             "Default: the config's executor.kind.")] = None,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Parallel workers, each with its own models.")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="With --executor ray: 'auto' or ray://host:port joins a running cluster; none starts a local Ray.")] = None,
    max_in_flight: Annotated[Optional[int], typer.Option(
        min=1, help="With --executor ray: images worked on at once over all workers (backpressure).")] = None,
    relocated: Annotated[bool, typer.Option(
        "--relocated", help="Resume a run whose images folder moved to --images (its images are checked to be "
                            "the same files).")] = False,
    wait_for_servers: Annotated[float, typer.Option(
        min=0, metavar="SECONDS", help="Wait up to SECONDS for the pipeline's model servers to answer (a run "
                                       "started before its servers); default 0: refuse at once.")] = 0.0,
) -> None:
    """Search each image for the regions its questions depend on and write verified chains."""
    from mmcof_gen.synthesize import RunInputs, synthesize as run

    pipeline = load_config(config, {
        "resolutions": _resolutions(resolutions, "synthesize"), "executor.kind": executor,
        "executor.workers": workers, "executor.address": ray_address, "executor.max_in_flight": max_in_flight,
        "tasks.exclude": exclude.resolve() if exclude else None})
    if (ray_address or max_in_flight) and not EXECUTORS[pipeline.executor.kind].cluster:
        raise UserError("synthesize: --ray-address and --max-in-flight need --executor ray")
    if questions and coco:
        raise UserError("synthesize: pass either --questions or --coco, not both")
    if (questions or coco) and source != SourceKind.auto:
        raise UserError(f"synthesize: --source {source.value} is for --images without --questions or --coco")
    require_extras(pipeline)
    stats = run(pipeline, images, out, RunInputs(questions, coco, source.value, limit), relocated=relocated,
                wait_for_servers=wait_for_servers)
    _say_what_was_made(stats, images, out)


def _say_what_was_made(stats: dict, images: Path, out: Path) -> None:
    """The run's counts; NothingMade when no trajectory came of it, saying why (no image, no task, or errors)."""
    from mmcof_gen.stats import no_task_line

    typer.echo(f"{stats['accepted']} accepted ({stats['direct']} direct, {stats['zoom']} zoom), "
               f"{stats['rejected']} rejected, {_errors(stats)}; results in {out}")
    if stats["images_without_tasks"]:
        typer.echo(no_task_line(stats))
    if stats["accepted"] + stats["rejected"] == 0:
        if stats["images"] + stats["image_errors"] + stats["skipped"] == 0:
            raise NothingMade(f"synthesize: no image in {images} (searched recursively); nothing was made")
        if stats["tasks"] == 0 and stats["images_without_tasks"]:
            raise NothingMade("synthesize: no image gave a task (why: the line above); nothing was made")
        raise NothingMade(f"synthesize: no trajectory was made ({stats['images']} images, {stats['tasks']} tasks, "
                          f"{_errors(stats)}); the reasons are in {out}/errors*.jsonl")


def _errors(stats: dict) -> str:
    """"7 errors, 5 will be retried on resume": what re-running the same command would try again."""
    retried = stats["transient_errors"]
    return f"{stats['errors']} errors" + (f", {retried} will be retried on resume" if retried else "")


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="A run folder made by synthesize.", exists=True, file_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Count tasks, accepted/rejected/error trajectories and direct/zoom samples, per resolution."""
    from mmcof_gen.stats import no_task_line, run_stats

    store = RunStore(run_dir)
    store.manifest()  # refuses a folder that is not a run
    numbers = run_stats(store)
    if as_json:
        typer.echo(json.dumps(numbers, indent=2))
        return
    table = Table(title=f"{run_dir}: {numbers['images']} images, {numbers['tasks']} tasks")
    for column in ("resolution", "accepted", "direct", "zoom", "rejected", "errors"):
        table.add_column(column, justify="right")
    for resolution, row in numbers["per_resolution"].items():
        table.add_row(resolution, *(str(row[k]) for k in ("accepted", "direct", "zoom", "rejected", "errors")))
    table.add_row("all", *(str(numbers[k]) for k in ("accepted", "direct", "zoom", "rejected", "errors")))
    Console().print(table)
    typer.echo(_errors(numbers))
    if numbers["images_without_tasks"]:
        typer.echo(no_task_line(numbers))
    if numbers["tasks_dropped"]:
        typer.echo("tasks dropped at synthesis: " + ", ".join(f"{k} ({v})" for k, v in numbers["tasks_dropped"].items()))
    if numbers["rejection_reasons"]:
        typer.echo("rejections: " + ", ".join(f"{k} ({v})" for k, v in numbers["rejection_reasons"].items()))
    for role, use in numbers["models"].items():
        typer.echo(f"{role}: {use['calls']} calls, {use['prompt_tokens']}+{use['completion_tokens']} tokens, "
                   f"{use['retries']} retries, ${use['cost_usd']:.4f}, {use['gpu_seconds']:.1f} GPU-s")


@app.command("filter")
def filter_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (synthesize) or a filtered folder.",
                                            exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="New folder for the kept trajectories (same layout as a run).")],
    config: Pipeline = None,
    exclude: Annotated[Optional[Path], typer.Option(
        help="Contamination list (one image sha256, file name or stem per line); overrides filter.exclude_file.",
        exists=True, dir_okay=False)] = None,
    balance: Annotated[Optional[float], typer.Option(
        min=0, max=1, help="Turn on balance with this target share of direct samples per (R, question type).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE)] = False,
    jobs: Jobs = None,
) -> None:
    """Keep the trajectories that make good training data; never modifies RUN_DIR.

    Rules (each on/off in the config): verified, format, box_validity, box_size, chain_length,
    contamination, reexecution, duplicate, balance. Prints kept/dropped per rule and writes
    OUT/filter_report.json with the exact reason of every dropped record."""
    from mmcof_gen.filtering import filter_run, report_table

    rules = load_config(config, {"filter.exclude_file": exclude, "filter.balance": True if balance is not None else None,
                                 "filter.direct_fraction": balance}).filter
    report = filter_run(run_dir, out, rules, overwrite, jobs=jobs)
    Console().print(report_table(report))
    typer.echo(f"kept {report['kept']} of {report['total']}; results in {out} (reasons in {out / 'filter_report.json'})")
    if report["kept"] == 0:
        raise NothingMade(f"filter: kept 0 of {report['total']} trajectories; the reasons are in "
                          f"{out / 'filter_report.json'}")


from mmcof_gen.export import FORMATS as EXPORT_FORMATS  # noqa: E402 - the registry the choices come from

TargetName = Enum("TargetName", {name: name for name in TARGETS}, type=str)  # the student models, targets.py


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (synthesize) or a filtered folder (filter).",
                                            exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Export folder; re-exporting into it is idempotent.")],
    format: Annotated[str, typer.Option(
        "--format", parser=registry_choice(EXPORT_FORMATS), metavar=f"<{'|'.join(EXPORT_FORMATS)}>",
        help="sharegpt: LLaMA-Factory (mmcof.json + dataset_info.json); qwen: the Qwen2.5-VL fine-tune repo; "
             "parquet: Hugging Face datasets, images embedded; v1: the older single-turn <|image_zoomin|> form; "
             "swift: ms-swift messages/images JSONL; verl / swift-grpo: the run's TASKS as RL prompts (train/test "
             "parquet for verl's zoom-in tool agent, JSONL for ms-swift's multi-turn GRPO), docs/format.md.")
    ] = "sharegpt",
    target: Annotated[TargetName, typer.Option(
        "--target", help="The student model: its processor's frame size, its zoom tool's call signature and box "
                         "convention, and that tool's crops (qwen2.5-vl: frame pixels, the CoF crop; qwen3-vl: "
                         "0-1000 image_zoom_in_tool).")] = TargetName(DEFAULT_TARGET),
    system_prompt: Annotated[Optional[Path], typer.Option(
        help="Text file whose content replaces the system prompt.", exists=True, dir_okay=False)] = None,
    max_pixels: Annotated[int, typer.Option(
        min=112 * 112, help="The trainer's image_max_pixels: samples whose frame is larger are dropped (a "
                            "downscale would break their boxes); also used for the token budget.")] = 3840 * 3840,
    absolute_paths: Annotated[bool, typer.Option(
        "--absolute-paths", help="Write absolute image paths (default: relative to the export folder).")] = False,
    tokenizer: Annotated[Optional[str], typer.Option(
        help="Tokenizer (path or hub id) for exact text token counts; without it they are estimated.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE)] = False,
    jobs: Jobs = None,
    embed_images: Annotated[bool, typer.Option(
        "--embed-images", help="RL formats: embed the frames (PNG bytes / data URIs) instead of file paths.")] = False,
    test_fraction: Annotated[Optional[float], typer.Option(
        min=0, max=1, help="RL formats: share of tasks in the test split (by a hash of the task id; default 0.1).")] = None,
    pass_rate_model: Annotated[Optional[tuple[str, str]], typer.Option(
        metavar="URL NAME", help="RL formats: measure each task's pass rate with this served policy (OpenAI-compatible "
                                 "endpoint and model name), eval's loop sampled --samples times.")] = None,
    samples: Annotated[int, typer.Option(min=1, help="Episodes per task for --pass-rate-model.")] = 8,
    keep_pass_rate: Annotated[Optional[str], typer.Option(
        metavar="LO..HI", help="With --pass-rate-model: keep only tasks whose pass rate lies in LO..HI (e.g. 0.1..0.9; "
                               "all-right or all-wrong groups give GRPO no gradient).")] = None,
) -> None:
    """Write the accepted trajectories as training data: frames and crops as content-addressed PNGs, the
    samples, a token budget (cutoff_len, vLLM --limit-mm-per-prompt), export_report.json and a README.md card.
    RL formats write the run's tasks as prompts with their measured difficulty instead."""
    from mmcof_gen.export import export, rl

    rl_options = _rl_options(embed_images, test_fraction, pass_rate_model, samples, keep_pass_rate)
    prompt = system_prompt.read_text(encoding="utf-8").removesuffix("\n") if system_prompt else None
    report = export(run_dir, format, out, system_prompt=prompt, max_pixels=max_pixels,
                    absolute_paths=absolute_paths, tokenizer=tokenizer, overwrite=overwrite,
                    jobs=jobs, rl_options=rl_options, target=target.value)
    (_echo_task_export if format in rl.FORMATS else _echo_sample_export)(report, out)


def _rl_options(embed_images: bool, test_fraction: float | None, pass_rate_model: tuple[str, str] | None,
                samples: int, keep_pass_rate: str | None):
    """The RL formats' options from their flags; None when none of them was given (an SFT export refuses them)."""
    from mmcof_gen.export import rl
    from mmcof_gen.models.chat import ChatModelConfig

    if keep_pass_rate is not None and pass_rate_model is None:
        raise UserError("--keep-pass-rate needs --pass-rate-model URL NAME to measure the pass rates")
    rate = rl.PassRate(ChatModelConfig(base_url=pass_rate_model[0], model=pass_rate_model[1]), samples,
                       rl.parse_band(keep_pass_rate) if keep_pass_rate else None) if pass_rate_model else None
    if embed_images or test_fraction is not None or rate is not None:
        return rl.RLOptions(embed_images, rl.RLOptions.test_fraction if test_fraction is None else test_fraction, rate)
    return None


def _echo_task_export(report: dict, out: Path) -> None:
    typer.echo(f"{report['samples']} prompts (train {report['train']}, test {report['test']}) of "
               f"{report['tasks']} tasks, {report['skipped']} skipped; "
               + ", ".join(str(out / name) for name in report["data_files"].values()))
    if report["samples"] == 0:
        raise NothingMade(f"export: no prompt was written ({report['skipped']} tasks skipped); the reasons are in "
                          f"{out / 'export_report.json'}")


def _echo_sample_export(report: dict, out: Path) -> None:
    budget = report["token_budget"]
    typer.echo(f"{report['samples']} samples ({report['direct']} direct, {report['zoom']} zoom), "
               f"{report['dropped']} dropped; {out / report['data_file']}")
    typer.echo(f"cutoff_len: {budget['cutoff_len']} (max {budget['max_tokens']} tokens, {budget['text_tokens']}); "
               f"vLLM: --limit-mm-per-prompt '{budget['limit_mm_per_prompt']}'")
    if report["samples"] == 0:
        raise NothingMade(f"export: no sample was written ({report['dropped']} dropped, {report['not_accepted']} not "
                          f"accepted); the reasons are in {out / 'export_report.json'}")


@app.command("validate")
def validate_command(
    path: Annotated[Path, typer.Argument(help="An export folder or a .json/.jsonl/.parquet sharegpt-style file.",
                                         exists=True)],
    image_root: Annotated[Optional[Path], typer.Option(
        help="Folder that image paths are relative to (default: the data file's folder).",
        exists=True, file_okay=False)] = None,
    max_pixels: Annotated[int, typer.Option(min=112 * 112, help="The trainer's image_max_pixels.")] = 3840 * 3840,
    cutoff_len: Annotated[Optional[int], typer.Option(min=1, help="Fail samples longer than this many tokens.")] = None,
    tolerance: Annotated[float, typer.Option(
        min=0, help="Mean absolute pixel difference (0-255) allowed between a stored crop and the re-crop "
                    "(0 = exact; e.g. 2 for crops saved as JPEG).")] = 0.0,
    tokenizer: Annotated[Optional[str], typer.Option(help="Tokenizer for exact text token counts.")] = None,
    target: Annotated[Optional[TargetName], typer.Option(
        "--target", help="The student model the data is for (its crop rule, box convention and processor); "
                         "default: the target export_report.json names, else qwen2.5-vl.")] = None,
    report: Annotated[Optional[Path], typer.Option(help="Also write the report as JSON here.", dir_okay=False)] = None,
) -> None:
    """Check a sharegpt-style zoom dataset (ours or anyone's): images open, <image> placeholders match the
    images, turn order, boxes inside images[0], frames a processor would not resize, token budget, and
    every tool call re-cropped from images[0] compared with the stored crop. Exit code 1 if a check fails."""
    from mmcof_gen.store import write_json_atomic
    from mmcof_gen.validate import report_table, validate

    result = validate(path, image_root=image_root, max_pixels=max_pixels, cutoff_len=cutoff_len,
                      tolerance=tolerance, tokenizer=tokenizer, target=target.value if target else None)
    Console().print(report_table(result))
    if report:
        write_json_atomic(report, result)
    if not result["ok"]:
        failed = {name: row["failed"] for name, row in result["checks"].items() if row["failed"]}
        raise NothingMade(f"validate: {path} failed " + ", ".join(f"{name} ({count})" for name, count in failed.items()))


@app.command()
def view(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (synthesize) or a filtered folder (filter).",
                                            exists=True, file_okay=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="HTML file to write (default: RUN_DIR/report.html); thumbnails and plots go to <name>_files/ beside it.",
        dir_okay=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE)] = False,
    jobs: Jobs = None,
) -> None:
    """Write a static HTML report (opens from disk, no server): every trajectory's frame with its boxes,
    crops, chain text and verdict, with filters and paging, and summary plots. Prints the report path."""
    from mmcof_gen.report import write_report

    typer.echo(write_report(run_dir, out or run_dir / "report.html", overwrite, jobs=jobs))


@app.command()
def finetune(
    data: Annotated[Optional[Path], typer.Option(help="Dataset folder with dataset_info.json (`export --format sharegpt`, "
                                                      "or any LLaMA-Factory sharegpt dataset).")] = None,
    model: Annotated[Optional[str], typer.Option(help="Local model folder, or a hub id downloaded beforehand "
                                                      "(`huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct`).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder: checkpoint-N/, adapter/ (or model/), merged/, "
                                                     "loss.jsonl, loss.png, finetune_report.json.")] = None,
    lora: Annotated[Optional[bool], typer.Option("--lora/--full", help="LoRA on the language model's linear layers, "
                                                                       "or full fine-tuning.")] = None,
    lora_rank: Annotated[Optional[int], typer.Option(min=1)] = None,
    epochs: Annotated[Optional[float], typer.Option(min=0)] = None,
    lr: Annotated[Optional[float], typer.Option(min=0, help="Peak learning rate (cosine schedule, 10% warm-up).")] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Stop after N optimiser steps (overrides --epochs).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(min=1, help="Samples per device per step.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option(min=1, help="Gradient accumulation steps.")] = None,
    max_length: Annotated[Optional[int], typer.Option(min=16, help="Tokens per sample; longer ones are cut in their "
                                                                   "text tail, or dropped if an image would be cut.")] = None,
    image_max_pixels: Annotated[Optional[int], typer.Option(min=784)] = None,
    image_min_pixels: Annotated[Optional[int], typer.Option(min=784)] = None,
    train_vision: Annotated[Optional[bool], typer.Option("--train-vision/--freeze-vision",
                                                         help="Train the vision tower too (frozen by default).")] = None,
    save_steps: Annotated[Optional[int], typer.Option(min=1, help="Checkpoint every N steps.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in --out.")] = False,
    merge: Annotated[bool, typer.Option(help="Also write the base model with the LoRA adapter merged (OUT/merged).")] = False,
    config: Annotated[Optional[str], typer.Option(help="Fine-tune YAML file or shipped name (default: finetune, the "
                                                       "CoF recipe); flags override it.")] = None,
    emit_llamafactory: Annotated[Optional[Path], typer.Option(
        help="Do not train: write a LLaMA-Factory YAML and dataset_info.json with the same settings into this folder.",
        file_okay=False)] = None,
) -> None:
    """Fine-tune Qwen2.5-VL on exported chains (labels on assistant turns only). Multi-GPU: `accelerate launch
    --config_file pipelines/finetune/accelerate_zero3.yaml -m mmcof_gen.cli finetune ...`."""
    from mmcof_gen.finetune.settings import load_finetune_config

    settings = load_finetune_config(
        config, data=data, model=model, out=out, method=None if lora is None else ("lora" if lora else "full"),
        lora_rank=lora_rank, epochs=epochs, lr=lr, max_steps=max_steps, batch_size=batch_size, grad_accum=grad_accum,
        max_length=max_length, image_max_pixels=image_max_pixels, image_min_pixels=image_min_pixels,
        train_vision=train_vision, save_steps=save_steps, resume=resume or None, merge=merge or None)
    if emit_llamafactory:
        from mmcof_gen.finetune.llamafactory import emit_llamafactory as emit

        typer.echo(f"wrote {emit(settings, emit_llamafactory)} and {emit_llamafactory / 'dataset_info.json'}")
        return
    extras.require("hf", "finetune (training; --emit-llamafactory needs no extra)")
    extras.require("data", "finetune (its loss.png)", ("matplotlib",))
    from mmcof_gen.finetune.train import finetune as run

    report = run(settings)
    if report:  # the main process of a multi-GPU run
        typer.echo(f"{report['global_step']} steps, loss {report['first_loss']:.4g} -> {report['last_loss']:.4g}; "
                   f"{report['dataset']['kept']} samples ({report['dataset']['dropped']} dropped, "
                   f"{report['dataset']['truncated']} truncated); {report['output']}")


def _bench_formats() -> type[Enum]:
    """`--bench-format` choices: the benchmark registry's names."""
    from mmcof_gen.benchmarks import BENCHMARKS

    return Enum("BenchFormat", {name.replace("-", "_"): name for name in BENCHMARKS}, type=str)


BenchFormat = _bench_formats()


@app.command("eval")
def eval_(
    bench: Annotated[Optional[Path], typer.Option(
        help="The benchmark in its own files, recognised by their layout: HR-Bench hr_bench_4k/8k .tsv or .parquet, "
             "MME-RealWorld .json, TreeBench .tsv or .parquet, a V*-bench folder (category folders or "
             "test_questions.jsonl), or a JSONL of {image, question, options?, answer, category?}.",
        exists=True)] = None,
    out: Annotated[Path, typer.Option(help="Results folder; re-running the same command resumes it.")] = Path("outputs/eval"),
    model: Annotated[Optional[str], typer.Option(help="In-process transformers model: hub id or local folder.")] = None,
    endpoint: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server (vLLM, SGLang), e.g. http://localhost:8000/v1.")] = None,
    served_model: Annotated[Optional[str], typer.Option(help="Model name on --endpoint.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Env var holding the --endpoint API key (none: vLLM's dummy key).")] = None,
    resolutions: Annotated[str, typer.Option(help="Pixel budgets R (frames of about RxR).")] = "224,448,672,1024,1920,3840",
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N questions.")] = None,
    judge_endpoint: Annotated[Optional[str], typer.Option(help="OpenAI-compatible server of an LLM judge for answers the rules cannot score.")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="Model name on --judge-endpoint.")] = None,
    baseline_no_zoom: Annotated[bool, typer.Option(help="Also ask each question without tools (one direct reply), for the adaptive comparison.")] = False,
    concurrency: Annotated[int, typer.Option(min=1, help="Episodes in flight.")] = 8,
    protocol: Annotated[str, typer.Option(help="mmcof (this project's: strict tool calls, lenient scoring) or "
                                               "cof-release (the published V* protocol to the letter; needs V*'s "
                                               "test_questions.jsonl and a judge; its R=3840 row is comparable).")] = "mmcof",
    bench_format: Annotated[Optional[BenchFormat], typer.Option(
        help="The benchmark's layout, when --bench cannot tell it by itself.")] = None,
    categories: Annotated[Optional[str], typer.Option(
        help="Evaluate only these categories, comma-separated (a task such as Perception selects its subtasks).")] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(
        help="Print two results folders' tables side by side, differences marked with *; runs nothing.",
        exists=True, file_okay=False)] = None,
    target: Annotated[Optional[TargetName], typer.Option(
        "--target", help="The student convention the model answers in (its frame size, zoom tool and box "
                         "convention), for a fine-tune whose config and name do not tell; default: told by the "
                         "model's config.json or name (Qwen3-VL), else qwen2.5-vl.")] = None,
) -> None:
    """Evaluate a chain-of-focus model on a V*-style benchmark at each resolution: the CoF zoom loop (at most
    6 replies and 6 images), scored by option letter / normalised match / judge. Writes results.jsonl,
    report.json and report.png to --out and prints accuracy, zoom rate, tokens and failures."""
    from mmcof_gen.evaluate import evaluate_bench

    if compare:
        from mmcof_gen.benchmarks.table import compare as side_by_side

        typer.echo(side_by_side(*compare))
        return
    if bench is None:
        raise UserError("eval: pass --bench PATH (the benchmark to evaluate on), or --compare A B")
    chat, judge = _eval_models(model, endpoint, served_model, api_key_env, judge_endpoint, judge_model, concurrency)
    settings = _eval_settings(resolutions=_resolutions(resolutions, "eval"), baseline_no_zoom=baseline_no_zoom,
                              concurrency=concurrency, protocol=protocol, target=target.value if target else None)
    chosen = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    report = evaluate_bench(bench, out, settings, chat, judge, limit, bench_format.value if bench_format else None,
                            chosen)
    _print_eval(report, bench, out)
    if all(row["errors"] == row["n"] for row in report["rows"]):
        raise NothingMade(f"eval: every episode failed; the reasons are in {out / 'results.jsonl'}")


def _eval_models(model: str | None, endpoint: str | None, served_model: str | None, api_key_env: str | None,
                 judge_endpoint: str | None, judge_model: str | None, concurrency: int):
    """The evaluated model's config (in process, or served) and the judge's (None: no judge) from eval's flags."""
    from mmcof_gen.models.chat import ChatModelConfig

    if (model is None) == (endpoint is None):
        raise UserError("eval: pass exactly one of --model (in-process) or --endpoint URL --served-model NAME")
    if endpoint and not served_model:
        raise UserError("eval: --endpoint needs --served-model NAME (the model name the server serves)")
    if judge_endpoint and not judge_model:
        raise UserError("eval: --judge-endpoint needs --judge-model NAME")
    if model:
        extras.require("hf", "eval --model (in-process; or serve it and pass --endpoint)")
        chat = ChatModelConfig(backend="transformers", model=model)
    else:
        chat = ChatModelConfig(backend="openai", base_url=endpoint, model=served_model, api_key_env=api_key_env,
                               max_concurrency=concurrency)
    judge = ChatModelConfig(backend="openai", base_url=judge_endpoint, model=judge_model) if judge_endpoint else None
    return chat, judge


def _eval_settings(**fields):
    """eval's `EvalSettings`; a value they refuse is one line naming its flag."""
    from mmcof_gen.evaluate import EvalSettings

    try:
        return EvalSettings(**fields)
    except ValueError as exc:
        error = exc.errors()[0]
        flag = "--" + str(error["loc"][0]).replace("_", "-")
        raise UserError(f"eval: {flag}: {error['msg'].removeprefix('Value error, ')}") from None


def _print_eval(report: dict, bench: Path, out: Path) -> None:
    """eval's tables: per mode, each R and category's figures; then the results table (`results.md`)."""
    from rich import box

    from mmcof_gen.eval_protocols import PROTOCOLS

    columns = {"resolution": "R", "category": "category", "n": "n", "accuracy": "accuracy", "zoom_rate": "zoom",
               "mean_zooms": "zooms", "mean_tokens": "tokens", "no_answer": "no-ans", "bad_call": "bad",
               "errors": "err"}
    for mode in dict.fromkeys(row["mode"] for row in report["rows"]):
        table = Table(title=f"{report['model']} ({mode}, protocol {report['protocol']}) on {bench}",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for key, header in columns.items():
            table.add_column(header, justify="left" if key == "category" else "right", no_wrap=key == "category")
        for row in (row for row in report["rows"] if row["mode"] == mode):
            table.add_row(*(str(row[key]) for key in columns))
        Console().print(table)
    if PROTOCOLS[report["protocol"]].comparable:
        typer.echo("comparable with the published numbers: the R=3840 rows (the release evaluates at 3840 only)")
    typer.echo((out / "results.md").read_text(encoding="utf-8").rstrip())
    typer.echo(f"results in {out} (results.jsonl, report.json, report.png, results.md, results.csv)")


@app.command()
def pipelines(
    show: Annotated[Optional[str], typer.Option(help="Print this shipped pipeline's YAML (to start a copy from).")] = None,
) -> None:
    """List the shipped pipelines with their descriptions; `--config NAME` uses one, `--show NAME` prints it."""
    shipped = resources.pipelines()
    if show is not None:
        if show not in shipped:
            raise UserError(f"pipelines --show {show}: no shipped pipeline of that name; one of: {', '.join(shipped)}")
        typer.echo(shipped[show].read_text(encoding="utf-8"), nl=False)
        return
    width = max(map(len, shipped))
    for name, path in shipped.items():
        typer.echo(f"{name:<{width}}  {resources.description(path)}")


def main() -> None:
    """Console entry point, exit codes people can script (docs/cli-contract.md): 0 done and made something;
    1 ran but made nothing or a check failed; 2 usage or input error. 1 and 2 come with one line on stderr,
    never a traceback."""
    try:
        code = app(prog_name="mmcof-gen", standalone_mode=False)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "mmcof-gen"
        _fail(f"{command}: {exc.format_message()} (see '{command} --help')", 2)
    except (ConfigError, StoreError, UserError, extras.MissingExtra) as exc:
        _fail(f"mmcof-gen: {exc}", 2)
    except NothingMade as exc:
        _fail(f"mmcof-gen: {exc}", 1)
    except ModuleNotFoundError as exc:  # an optional import not guarded by extras.require
        if (extra := extras.extra_of(exc.name)) is None:
            raise
        _fail(f"mmcof-gen: {extras.missing(extra, ' '.join(sys.argv[1:2]) or 'this command')}", 2)
    except typer.Abort:
        _fail("mmcof-gen: interrupted; re-run the same command to resume", 130)
    sys.exit(code or 0)


def _fail(line: str, code: int) -> None:
    print(" ".join(line.split()), file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
