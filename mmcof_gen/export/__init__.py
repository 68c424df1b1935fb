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
from mmcof_gen.replay import WINDOW, FrameSource, ReplayError, replayable, replayed
from mmcof_gen.schema import Manifest, Trajectory
from mmcof_gen.store import (RunStore, claim_out_dir, record_output, remove_temporaries, write_bytes_atomic,
                             write_json_atomic)

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
    manifest = replayable(store)
    if isinstance(form, rl.RLFormat):
        if form.needs:
            require("data", f"export --format {form.name}", form.needs)
        _prepare_out_dir(run_dir, out_dir, overwrite)
        options = replace(rl_options or rl.RLOptions(), target=student.name)
        made = form.export(store, manifest, out_dir, options, jobs)
        task_sources = made.pop("task_sources")
        report = {"input": str(run_dir), "output": str(out_dir), **made, **_run_facts(manifest, task_sources)}
        return _write_report(run_dir, out_dir, report, rl.card(report, form))
    if rl_options is not None:
        raise ConfigError(f"--embed-images, --test-fraction and --pass-rate-model apply to --format "
                          f"{' or '.join(rl.FORMATS)}, not {fmt}; drop them")
    if form.extra:
        require(form.extra[0], f"export --format {form.name}", form.extra[1])
    # the extras are checked before the folder is made
    budget = TokenBudget(max_pixels, tokenizer, student.min_pixels, student.factor)
    _prepare_out_dir(run_dir, out_dir, overwrite)
    files = None if form.embeds_images else ImageFiles(out_dir, absolute_paths)
    samples = Samples(form, student, budget, system_prompt)
    samples.write(store, manifest, files, out_dir, jobs)
    if form.llamafactory_name:
        write_json_atomic(out_dir / "dataset_info.json", {form.llamafactory_name: llamafactory_entry(form.data_file)})
    report = {
        "input": str(run_dir), "output": str(out_dir), "format": form.name, "target": student.name,
        "data_file": form.data_file, **samples.counts(files is not None), "absolute_paths": absolute_paths,
        "system_prompt": "custom" if system_prompt else "default", "token_budget": budget.summary(),
        **_run_facts(manifest, dict(samples.task_sources.most_common())),
    }
    return _write_report(run_dir, out_dir, report, dataset_card(report, form, student))


def _run_facts(manifest: Manifest, task_sources: dict) -> dict:
    """What every export report says of the run it came from: its config hash, version, whether it was
    filtered, and where its images (and their licence files) are."""
    images_root = Path(manifest.images_folder)
    return {"config_hash": manifest.fingerprint, "package_version": manifest.versions.get("mmcof-gen"),
            "filtered": manifest.filter is not None,
            "sources": {"images": str(images_root), "task_sources": task_sources,
                        "licence_files": _licence_files(images_root)}}


def _write_report(run_dir: Path, out_dir: Path, report: dict, card: str) -> dict:
    """`export_report.json` and the card `README.md`, then the record of what the export wrote."""
    write_json_atomic(out_dir / REPORT, report)
    write_bytes_atomic(out_dir / "README.md", card.encode("utf-8"))
    record_output(out_dir, MARKER, run_dir)
    return report


class Samples:
    """The samples of an SFT export, written in run order, and what the report counts of them."""

    def __init__(self, form: ExportFormat, student: Target, budget: TokenBudget, system_prompt: str | None):
        self.form, self.student, self.budget, self.system_prompt = form, student, budget, system_prompt
        self.messages = student.messages or form.messages
        self.tally: Counter = Counter()
        self.per_resolution: dict[int, Counter] = {}
        self.zooms: Counter = Counter()
        self.frame_sizes: Counter = Counter()
        self.task_sources: Counter = Counter()
        self.dropped: list[dict] = []
        self.image_names: set[str] = set()
        self.images_written = 0
        self.written = 0

    def write(self, store: RunStore, manifest: Manifest, files: ImageFiles | None, out_dir: Path, jobs: int) -> None:
        """Replay every accepted trajectory small enough into its pictures and write its record."""
        if files is not None:
            (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
        writer = self.form.writer(out_dir / self.form.data_file)
        max_pixels = self.budget.max_pixels
        todo = ((None if _not_exported(t, max_pixels, self.student) else t, t) for t in store.trajectories())
        # Parquet's pictures carry their PNG bytes: it keeps the run's order rather than hold a window of them.
        window = 1 if files is None else WINDOW
        for trajectory, pictures in replayed(todo, partial(sample_images, files, self.student.name), manifest, jobs,
                                             window):
            if trajectory.status != "accepted":
                self.tally["not_accepted"] += 1
            elif pictures is None:  # not replayed: its frame is too large
                self.dropped.append({"id": trajectory.id, "reason": _not_exported(trajectory, max_pixels,
                                                                                  self.student)})
            elif isinstance(pictures, ReplayError):
                self.dropped.append({"id": trajectory.id, "reason": str(pictures)})
            else:
                messages = self.messages(trajectory, self.system_prompt)
                writer.write(self.form.record(trajectory.id, messages, [picture.ref for picture in pictures]))
                self.budget.add(trajectory.id, messages, [picture.size for picture in pictures])
                self._count(trajectory, pictures)
        writer.close()
        self.written = writer.count

    def _count(self, trajectory: Trajectory, pictures: list[Picture]) -> None:
        view, kind = trajectory.view, trajectory.sample_kind
        self.image_names.update(picture.name for picture in pictures if picture.name)
        self.images_written += sum(picture.written for picture in pictures)
        self.tally[kind] += 1
        self.tally["images"] += len(pictures)
        self.per_resolution.setdefault(view.resolution, Counter())[kind] += 1
        self.zooms[len(trajectory.chain)] += 1
        self.frame_sizes[_size_bin(max(view.width, view.height))] += 1
        self.task_sources[trajectory.task.source] += 1

    def counts(self, as_files: bool) -> dict:
        """The report's counts; `as_files`: the images were written as files (not embedded)."""
        return {
            "samples": self.written, "direct": self.tally["direct"], "zoom": self.tally["zoom"],
            "not_accepted": self.tally["not_accepted"], "dropped": len(self.dropped), "dropped_samples": self.dropped,
            "images": self.tally["images"], "image_files": len(self.image_names) if as_files else None,
            "images_written": self.images_written if as_files else None,
            "per_resolution": {str(r): {"direct": c["direct"], "zoom": c["zoom"]}
                               for r, c in sorted(self.per_resolution.items())},
            "zooms": {str(k): v for k, v in sorted(self.zooms.items())},
            "frame_sizes": {label: self.frame_sizes[label] for label in _SIZE_LABELS if self.frame_sizes[label]},
        }


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
