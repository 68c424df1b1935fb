"""`mmcof-gen export`: a run (or filtered) folder in, training-ready data out.

Reads top to bottom like the data flow: open the run, rebuild each accepted trajectory's frame and crops
(the same pixels synthesis saw, proven by the frame hash), write them as content-addressed PNGs (or embed
them), write one record per sample in the chosen format, count tokens, then write `dataset_info.json`
(LLaMA-Factory formats), `export_report.json` and the dataset card `README.md`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from mmcof_gen.budget import TokenBudget
from mmcof_gen.errors import ConfigError
from mmcof_gen.export import parquet, qwen, rl, sharegpt, swift, v1
from mmcof_gen.export.base import ExportFormat, llamafactory_entry
from mmcof_gen.export.card import dataset_card
from mmcof_gen.export.files import IMAGES_DIR, PNG_LEVEL, ImageFiles
from mmcof_gen.targets import DEFAULT_TARGET, TARGETS, Target
from mmcof_gen.extras import require
from mmcof_gen.imaging import image_to_png_bytes
from mmcof_gen.replay import WINDOW, FrameSource, ReplayError, replayed
from mmcof_gen.schema import Trajectory
from mmcof_gen.store import (RunStore, StoreError, claim_out_dir, images_folder, record_output, remove_temporaries,
                             write_bytes_atomic, write_json_atomic)

# The export formats by name: the one registry the command and the CLI's --format choices read. A new format
# is one module and one line here.
FORMATS: dict[str, ExportFormat | rl.RLFormat] = {
    **{f.name: f for f in (sharegpt.FORMAT, qwen.FORMAT, parquet.FORMAT, v1.FORMAT, swift.FORMAT)},
    **rl.FORMATS,  # tasks as RL prompts, not accepted chains (export/rl.py)
}
DEFAULT_MAX_PIXELS = 3840 * 3840  # the CoF recipe's image_max_pixels
REPORT = "export_report.json"
MARKER = ".mmcof-export"
LICENCE_NAMES = ("LICENSE", "LICENCE", "NOTICE", "COPYING")


def export(
    run_dir: Path,
    fmt: str,
    out_dir: Path,
    system_prompt: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    absolute_paths: bool = False,
    tokenizer: str | None = None,
    overwrite: bool = False,
    jobs: int = 1,
    rl_options: rl.RLOptions | None = None,
    target: str = DEFAULT_TARGET,
) -> dict:
    """Export the accepted trajectories of `run_dir` as `fmt` for the student model `target` (targets.py)
    into `out_dir`; returns the export report. `overwrite`: replace an export of another run in `out_dir`. An RL
    format (export/rl.py) exports the run's tasks instead, with `rl_options`; the SFT options do not apply to it.

    Frames and crops are made and encoded by `jobs` processes; records are written in run order, one at
    a time, so the output is the same for any `jobs` and memory does not grow with the run."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    form, student = FORMATS[fmt], TARGETS[target]
    if student.formats is not None and fmt not in student.formats:
        raise ConfigError(f"--format {fmt} cannot be written for --target {target}; use one of "
                          f"{', '.join(student.formats)}")
    store = RunStore(run_dir)
    manifest = store.manifest()
    try:
        FrameSource(manifest)
    except ReplayError as exc:
        raise StoreError(f"{run_dir}: {exc}") from None
    if isinstance(form, rl.RLFormat):
        options = replace(rl_options or rl.RLOptions(), target=student.name)
        return _export_tasks(form, store, manifest, run_dir, out_dir, options, overwrite, jobs)
    if rl_options is not None:
        raise ConfigError(f"--embed-images, --test-fraction and --pass-rate-model apply to --format "
                          f"{' or '.join(rl.FORMATS)}, not {fmt}; drop them")
    sample_messages = student.messages or form.messages
    if form.extra:
        require(form.extra[0], f"export --format {form.name}", form.extra[1])
    # the extras are checked before the folder is made
    budget = TokenBudget(max_pixels, tokenizer, student.min_pixels, student.factor)
    _prepare_out_dir(run_dir, out_dir, overwrite)

    files = None if form.embeds_images else ImageFiles(out_dir, absolute_paths)
    if files is not None:
        (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    writer = form.writer(out_dir / form.data_file)
    tally: Counter = Counter()
    per_resolution: dict[int, Counter] = {}
    zooms: Counter = Counter()
    frame_sizes: Counter = Counter()
    task_sources: Counter = Counter()
    dropped = []
    image_names: set[str] = set()
    images_written = 0
    todo = ((None if _not_exported(t, max_pixels, student) else t, t) for t in store.trajectories())
    # Parquet's pictures carry their PNG bytes: it keeps the run's order rather than hold a window of them.
    window = 1 if files is None else WINDOW
    for trajectory, pictures in replayed(todo, partial(sample_images, files, student.name), manifest, jobs, window):
        if trajectory.status != "accepted":
            tally["not_accepted"] += 1
            continue
        view = trajectory.view
        if pictures is None:  # not replayed: its frame is too large
            dropped.append({"id": trajectory.id, "reason": _not_exported(trajectory, max_pixels, student)})
            continue
        if isinstance(pictures, ReplayError):
            dropped.append({"id": trajectory.id, "reason": str(pictures)})
            continue
        messages = sample_messages(trajectory, system_prompt)
        writer.write(form.record(trajectory.id, messages, [picture.ref for picture in pictures]))
        budget.add(trajectory.id, messages, [picture.size for picture in pictures])
        image_names.update(picture.name for picture in pictures if picture.name)
        images_written += sum(picture.written for picture in pictures)
        tally["zoom" if trajectory.chain else "direct"] += 1
        tally["images"] += len(pictures)
        per_resolution.setdefault(view.resolution, Counter())["zoom" if trajectory.chain else "direct"] += 1
        zooms[len(trajectory.chain)] += 1
        frame_sizes[_size_bin(max(view.width, view.height))] += 1
        task_sources[trajectory.task.source] += 1
    writer.close()

    if form.llamafactory_name:
        write_json_atomic(out_dir / "dataset_info.json", {form.llamafactory_name: llamafactory_entry(form.data_file)})
    images_root = Path(images_folder(manifest))
    report = {
        "input": str(run_dir), "output": str(out_dir), "format": form.name, "target": student.name,
        "data_file": form.data_file,
        "samples": writer.count, "direct": tally["direct"], "zoom": tally["zoom"],
        "not_accepted": tally["not_accepted"], "dropped": len(dropped), "dropped_samples": dropped,
        "images": tally["images"], "image_files": len(image_names) if files else None,
        "images_written": images_written if files else None,
        "absolute_paths": absolute_paths,
        "system_prompt": "custom" if system_prompt else "default",
        "token_budget": budget.summary(),
        "per_resolution": {str(r): {"direct": c["direct"], "zoom": c["zoom"]} for r, c in sorted(per_resolution.items())},
        "zooms": {str(k): v for k, v in sorted(zooms.items())},
        "frame_sizes": {label: frame_sizes[label] for label in _SIZE_LABELS if frame_sizes[label]},
        "config_hash": manifest.get("fingerprint"),
        "package_version": manifest.get("versions", {}).get("mmcof-gen"),
        "filtered": "filter" in manifest,
        "sources": {"images": str(images_root), "task_sources": dict(task_sources.most_common()),
                    "licence_files": _licence_files(images_root)},
    }
    write_json_atomic(out_dir / REPORT, report)
    write_bytes_atomic(out_dir / "README.md", dataset_card(report, form, student).encode("utf-8"))
    record_output(out_dir, MARKER, run_dir)
    return report


def _export_tasks(form: rl.RLFormat, store: RunStore, manifest: dict, run_dir: Path, out_dir: Path,
                  options: rl.RLOptions, overwrite: bool, jobs: int) -> dict:
    """An RL format's export, in the folder, report and card conventions of every export."""
    if form.needs:
        require("data", f"export --format {form.name}", form.needs)
    _prepare_out_dir(run_dir, out_dir, overwrite)
    images_root = Path(images_folder(manifest))
    report = {"input": str(run_dir), "output": str(out_dir),
              **form.export(store, manifest, out_dir, options, jobs),
              "config_hash": manifest.get("fingerprint"),
              "package_version": manifest.get("versions", {}).get("mmcof-gen"), "filtered": "filter" in manifest}
    report["sources"] = {"images": str(images_root), "task_sources": report.pop("task_sources"),
                         "licence_files": _licence_files(images_root)}
    write_json_atomic(out_dir / REPORT, report)
    write_bytes_atomic(out_dir / "README.md", rl.card(report, form).encode("utf-8"))
    record_output(out_dir, MARKER, run_dir)
    return report


def _not_exported(trajectory: Trajectory, max_pixels: int, target: Target) -> str | None:
    """Why a trajectory gets no sample without replaying it: not accepted, or a frame over `max_pixels`."""
    if trajectory.status != "accepted":
        return "not accepted"
    width, height = target.frame_size(trajectory.view)
    if width * height > max_pixels:
        return (f"frame {width}x{height} is above --max-pixels {max_pixels}: a trainer would "
                "downscale it and break its box coordinates")
    return None


@dataclass(frozen=True)
class Picture:
    """One image of a sample: what the record names (a path, or PNG bytes for Parquet), its size, and
    for a file, its name and whether this export wrote it."""

    ref: str | bytes
    size: tuple[int, int]
    name: str | None = None
    written: bool = False


def sample_images(files: ImageFiles | None, target: str, frames: FrameSource,
                  trajectory: Trajectory) -> list[Picture]:
    """The frame and the crops of one sample for the target named `target`, written as files (or encoded to
    embed when `files` is None); runs in an export's worker processes."""
    pictures = TARGETS[target].pictures(frames, trajectory)
    if files is None:
        return [Picture(image_to_png_bytes(p, PNG_LEVEL), p.size) for p in pictures]
    written = []
    for picture in pictures:
        ref, name, new = files.add(picture)
        written.append(Picture(ref, picture.size, name, new))
    return written


_SIZE_EDGES = (448, 672, 1024, 1536, 2048, 3840)
_SIZE_LABELS = [f"<= {edge}" for edge in _SIZE_EDGES] + [f"> {_SIZE_EDGES[-1]}"]


def _size_bin(side: int) -> str:
    return next((f"<= {edge}" for edge in _SIZE_EDGES if side <= edge), _SIZE_LABELS[-1])


def _licence_files(images_root: Path) -> list[str]:
    """Licence-like files in the image folder or its parent, for the card to point at."""
    found = []
    for folder in (images_root, images_root.parent):
        if folder.is_dir():
            found += [str(p) for p in sorted(folder.iterdir())
                      if p.is_file() and p.name.upper().startswith(LICENCE_NAMES)]
    return found


def _prepare_out_dir(run_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Refuse the input folder and foreign folders; a folder marked as an export of this run may be exported
    into again."""
    claim_out_dir(run_dir, out_dir, MARKER, is_input="run folder; pass a new folder for the export", earlier="export",
                  overwrite=overwrite)
    remove_temporaries(out_dir / IMAGES_DIR)  # what an interrupted export was writing; it is written again
