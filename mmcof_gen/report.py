"""`mmcof-gen view`: a static HTML report of a run folder (or a filtered one) that opens from disk.

Why static: runs are looked at on clusters and laptops with no server, so the report is one HTML file
plus a `<stem>_files/` folder: JPEG thumbnails, summary plots, and the data as JS files (a `file://`
page may load a script, but not fetch a JSON file): `data.js` (the summary), `index.js` (the few fields
of every trajectory the page filters on) and `cards-NNNNN.js` (the full cards, CHUNK per file, loaded
only when a page shows one of them). So a run of 100k trajectories makes a report a browser opens.

Frames are rebuilt with `imaging.make_frames` (the working frames the model saw, one decode per image)
and crops with `imaging.crop_zoom` (the zoom tool), so the report shows the very pixels of the training
samples; `jobs` processes make them, one image at a time each.
Asset names are content-addressed (recorded frame hash, box, thumbnail size): a frame shared by many
trajectories is written once, and a re-run reuses the files already there without decoding the image.

Example::

    write_report(Path("outputs/demo/run"), Path("outputs/demo/run/report.html"))
"""

from __future__ import annotations

import hashlib
import html
import importlib.util
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from string import Template
from urllib.parse import quote

from PIL import Image

from mmcof_gen.cof_format import SYSTEM_PROMPT, trajectory_messages
from mmcof_gen.config import ImagesConfig
from mmcof_gen.imaging import ImageError, InvalidBox, box_area, crop_zoom, image_sha256, make_frames, validate_box
from mmcof_gen.parallel import ordered_map
from mmcof_gen.schema import Box, ErrorRecord, Trajectory
from mmcof_gen.stats import run_stats
from mmcof_gen.store import AtomicFile, RunStore, StoreError, claim_out_dir, record_output

FRAME_THUMB = 768  # longest side of a frame thumbnail, in pixels
CROP_THUMB = 384  # longest side of a crop thumbnail
JPEG_QUALITY = 85
PAGE_SIZE = 50
CHUNK = 250  # cards per data file: a page of filtered cards loads only the files that hold them
MAX_ERRORS_SHOWN = 1000  # error records listed in the report (all are counted)
ASSETS = Path(__file__).resolve().parent / "report_assets"


MARKER = ".mmcof-view"


def write_report(run_dir: Path, out_html: Path, overwrite: bool = False, jobs: int = 1) -> Path:
    """Write the report of `run_dir` to `out_html`, its assets to `<stem>_files/`; return `out_html`.

    A pure function of the run folder: the same run gives the same files (asset names are content
    hashes), whatever `jobs` (processes making thumbnails). A trajectory whose image is missing or
    unreadable is shown with the reason, not dropped. The records are streamed twice (frames to draw,
    then the cards): memory holds the distinct frames and a few numbers per trajectory, not the records.
    A report of another run at `out_html` is refused unless `overwrite` (its recorded files are removed first).
    """
    run_dir, out_html = Path(run_dir), Path(out_html)
    store = RunStore(run_dir)
    manifest = store.manifest()
    errors = list(store.errors())
    stats = run_stats(store)
    files = _claim_files(run_dir, out_html, overwrite)
    images_root = manifest.images_folder
    assets = FrameAssets(files, Path(images_root) if images_root else None,
                         manifest.max_pixels or ImagesConfig().max_pixels)
    views, rows = _frame_views_of(store, assets, jobs)
    chunks = _write_cards(files, (trajectory_card(t, views[(t.task.image, t.view.resolution, t.view.frame_sha256)])
                                  for t in store.trajectories()))
    data = {
        "title": f"mmcof-gen report: {run_dir}",
        "run_dir": str(run_dir.resolve()),
        "created": manifest.created,
        "config_hash": manifest.fingerprint,
        "page_size": PAGE_SIZE,
        "chunk_size": CHUNK,
        "chunks": chunks,
        "stats": stats,
        "funnel": funnel(stats, errors),
        # Plots need matplotlib (the `data` extra); without it the page says how to get them.
        "plots": write_plots(rows, stats, errors, files) if importlib.util.find_spec("matplotlib") else None,
        "errors": [e.model_dump(mode="json") for e in errors[:MAX_ERRORS_SHOWN]],
        "error_count": len(errors),
        "system_prompt": SYSTEM_PROMPT,
    }
    _write_text(files / "data.js", "window.MMCOF_REPORT = " + json.dumps(data, separators=(",", ":")) + ";\n")
    for asset in ("report.js", "report.css"):
        shutil.copyfile(ASSETS / asset, files / asset)
    page = Template((ASSETS / "report.html").read_text(encoding="utf-8"))
    _write_text(out_html, page.substitute(title=html.escape(data["title"]), files=quote(files.name)))
    record_output(files, MARKER, run_dir, beside=(out_html,))
    return out_html


def _claim_files(run_dir: Path, out_html: Path, overwrite: bool) -> Path:
    """The report's `<stem>_files/` folder beside `out_html`, made this report's own (`claim_out_dir`)."""
    files = out_html.parent / f"{out_html.stem}_files"
    try:
        out_html.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = f"{out_html.parent} is a file" if out_html.parent.is_file() else exc.strerror
        raise StoreError(f"cannot write --out {out_html}: {why}; pass a writable path") from None
    claim_out_dir(run_dir, files, MARKER, is_input="run folder", earlier="report", overwrite=overwrite)
    return files


def _frame_views_of(store: RunStore, assets: FrameAssets, jobs: int) -> tuple[dict, list[PlotRow]]:
    """The view of every recorded frame, `{(image, R, frame sha): view}`, drawn by `jobs` processes one image
    at a time, and the plot row of every trajectory (the first pass over the records)."""
    frames: dict[str, dict[tuple[int, str], tuple[tuple[int, int], dict[str, Box]]]] = {}  # image -> frames
    rows = []
    for t in store.trajectories():
        _, boxes = frames.setdefault(t.task.image, {}).setdefault(
            (t.view.resolution, t.view.frame_sha256), ((t.view.width, t.view.height), {}))
        boxes.update((_box_key(box), box) for box in zoom_boxes(t))
        rows.append(PlotRow.of(t))
    jobs_in = ((image, [(r, sha, size, list(boxes.values())) for (r, sha), (size, boxes) in wanted.items()])
               for image, wanted in frames.items())
    views = {}
    for image, made in zip(frames, ordered_map(partial(_frame_views, assets), jobs_in, jobs)):
        views.update(((image, r, sha), view) for (r, sha), view in made.items())
    return views, rows


INDEX_FIELDS = ("id", "status", "kind", "resolution", "question_type", "image", "question")


def _write_cards(files: Path, cards) -> int:
    """The cards in files of CHUNK (`cards-00000.js`, ...), which the page loads as it shows them, and
    `index.js`, the few fields of every card that the page filters on; returns the number of chunk files."""
    chunk: list[dict] = []
    count = 0

    def flush() -> None:
        nonlocal chunk, count
        _write_text(files / chunk_name(count), f"window.mmcofChunk({count}," + json.dumps(chunk, separators=(",", ":"))
                    + ");\n")
        chunk, count = [], count + 1

    with AtomicFile(files / "index.js") as index_tmp:
        with index_tmp.open("w", encoding="utf-8") as index:
            index.write("window.MMCOF_INDEX = [")
            for number, card in enumerate(cards):
                index.write(("" if number == 0 else ",") + "\n" + json.dumps([card[k] for k in INDEX_FIELDS],
                                                                           separators=(",", ":")))
                chunk.append(card)
                if len(chunk) == CHUNK:
                    flush()
            index.write("\n];\n")
        if chunk:
            flush()
    for stale in files.glob("cards-*.js"):  # chunks of an earlier, longer report in the same folder
        if int(stale.stem.removeprefix("cards-")) >= count:
            stale.unlink()
    return count


def chunk_name(number: int) -> str:
    return f"cards-{number:05d}.js"


class FrameAssets:
    """Frame and crop thumbnails of one report folder, each made once per (recorded frame, box)."""

    def __init__(self, folder: Path, images_root: Path | None, max_pixels: int):
        self.folder = folder
        self.images_root = images_root
        self.max_pixels = max_pixels

    def frame_views(self, image: str, wanted: list[tuple[int, str, tuple[int, int], list[Box]]]) -> dict:
        """`{(R, recorded frame sha): view}` for the frames of `image` that `wanted` lists with their recorded
        size and boxes; a view is `{"src", "crops": {box: src}, "crop_errors": {box: reason}, "warning"?}`,
        or `{"missing": reason}` when the frame cannot be rebuilt.

        Decodes the image only when a thumbnail is not there yet, and then once for all its R. A box the
        zoom tool refuses gets its reason instead of a crop (an unfiltered run may hold one), never an exception.
        """
        views, todo = {}, []
        for resolution, frame_sha, size, boxes in wanted:
            crop_errors = {}
            for box in boxes:
                try:
                    validate_box(box, *size)
                except InvalidBox as exc:
                    crop_errors[_box_key(box)] = str(exc)
            boxes = [box for box in boxes if _box_key(box) not in crop_errors]
            names = self._names(frame_sha, boxes)
            if all((self.folder / name).exists() for name in [names["frame"], *names["crops"].values()]):
                views[(resolution, frame_sha)] = {"src": names["frame"], "crops": names["crops"],
                                                  "crop_errors": crop_errors}
            else:
                todo.append((resolution, frame_sha, boxes, crop_errors))
        if not todo:
            return views
        try:
            frames = self._frames(image, {resolution for resolution, *_ in todo})
        except LookupError as exc:
            return {**views, **{(resolution, frame_sha): {"missing": str(exc)} for resolution, frame_sha, *_ in todo}}
        for resolution, frame_sha, boxes, crop_errors in todo:
            views[(resolution, frame_sha)] = self._draw(frames[resolution], image, frame_sha, boxes, crop_errors)
        return views

    def _frames(self, image: str, resolutions: set[int]) -> dict[int, Image.Image]:
        """The frames of `image` at `resolutions`, from one decode; LookupError saying why they cannot be made."""
        if self.images_root is None:
            raise LookupError("the run's manifest names no images folder (inputs.images)")
        path = self.images_root / image
        if not path.is_file():
            raise LookupError(f"image not found: {path}")
        try:
            return make_frames(path, resolutions, self.max_pixels)
        except (ImageError, OSError) as exc:
            raise LookupError(f"cannot rebuild the frame from {path}: {exc}") from None

    def _draw(self, frame: Image.Image, image: str, frame_sha: str, boxes: list[Box], crop_errors: dict) -> dict:
        view: dict = {}
        names = self._names(frame_sha, boxes)
        actual_sha = image_sha256(frame)
        if actual_sha != frame_sha:
            view["warning"] = (f"{self.images_root / image} gives another frame than the one recorded at synthesis "
                               "(the image changed?); boxes and crops below are drawn on the current image")
            names = self._names(actual_sha, boxes)
        self._write_thumbnail(frame, names["frame"], FRAME_THUMB)
        for key, name in list(names["crops"].items()):
            try:
                crop = crop_zoom(frame, json.loads(key))
            except InvalidBox as exc:
                crop_errors[key] = str(exc)
                del names["crops"][key]
                continue
            self._write_thumbnail(crop, name, CROP_THUMB)
        return {**view, "src": names["frame"], "crops": names["crops"], "crop_errors": crop_errors}

    @staticmethod
    def _names(frame_sha: str, boxes: list[Box]) -> dict:
        def name(kind: str, *parts) -> str:
            digest = hashlib.sha256(json.dumps([frame_sha, kind, *parts]).encode()).hexdigest()[:20]
            return f"{kind}-{digest}.jpg"

        crops = {_box_key(box): name("crop", list(box), CROP_THUMB) for box in boxes}
        return {"frame": name("frame", FRAME_THUMB), "crops": crops}

    def _write_thumbnail(self, image: Image.Image, name: str, side: int) -> None:
        path = self.folder / name
        if path.exists():
            return
        thumbnail = image.copy()
        thumbnail.thumbnail((side, side), Image.LANCZOS)
        with AtomicFile(path) as tmp:
            thumbnail.save(tmp, format="JPEG", quality=JPEG_QUALITY)


def _frame_views(assets: FrameAssets, job: tuple[str, list]) -> dict:
    """`FrameAssets.frame_views` of one image; runs in the view's worker processes."""
    return assets.frame_views(*job)


def zoom_boxes(trajectory: Trajectory) -> list[Box]:
    """Boxes whose crop the report shows: the kept chain, then zooms of the search that were not kept."""
    chain = [c.box for c in trajectory.chain]
    return chain + [s.box for s in trajectory.steps if s.action == "zoom" and s.box and s.box not in chain]


def trajectory_card(trajectory: Trajectory, view: dict) -> dict:
    """What the page shows of one trajectory: frame, boxes of every step, crops, chain text, verdict."""
    t = trajectory
    crops, crop_errors = view.get("crops", {}), view.get("crop_errors", {})

    def crop(box: Box) -> dict:
        return {"box": box, "crop": crops.get(_box_key(box)), "crop_error": crop_errors.get(_box_key(box))}

    chain_boxes = [c.box for c in t.chain]
    return {
        "id": t.id,
        "status": t.status,
        "reason": t.reason,
        "resolution": t.view.resolution,
        "kind": t.kind,
        "question_type": t.task.question_type,
        "image": t.task.image,
        "question": t.task.question,
        "options": t.task.options,
        "expected": t.task.answer,
        "answer": t.answer,
        "verdict": t.verdict.model_dump(mode="json") if t.verdict else None,
        "size": [t.view.width, t.view.height],
        "frame": {k: v for k, v in view.items() if k not in ("crops", "crop_errors")},
        "steps": [
            {"action": s.action, "thought": s.thought, "box": s.box, "observation": s.observation,
             "arguments": s.arguments, "detections": len(s.detections)}
            for s in t.steps
        ],
        "chain": [{"thought": c.thought, "label": c.label, **crop(c.box)} for c in t.chain],
        "other_zooms": [{"step": i + 1, **crop(s.box)} for i, s in enumerate(t.steps)
                        if s.action == "zoom" and s.box and s.box not in chain_boxes],
        "final_thought": t.final_thought,
        # The sample as it trains (docs/format.md), without the system prompt the page shows once.
        "messages": trajectory_messages(t)[1:] if t.status == "accepted" else None,
    }


def funnel(stats: dict, errors: list[ErrorRecord]) -> list[tuple[str, int]]:
    """From searches started to zoom chains kept: where samples are lost."""
    crashed = sum(e.stage == "trajectory" for e in errors)
    finished = stats["accepted"] + stats["rejected"]
    return [("searches", finished + crashed), ("finished", finished), ("accepted", stats["accepted"]),
            ("zoom chains", stats["zoom"])]


@dataclass(frozen=True)
class PlotRow:
    """What the plots need of one trajectory, so that the report never holds the records themselves."""

    status: str
    resolution: int
    zooms: int
    box_fractions: tuple[float, ...]  # chain box area / frame area
    question_type: str

    @classmethod
    def of(cls, t: Trajectory) -> PlotRow:
        frame_area = t.view.width * t.view.height
        return cls(t.status, t.view.resolution, len(t.chain), tuple(box_area(c.box) / frame_area for c in t.chain),
                   t.task.question_type)


def write_plots(rows: list[PlotRow], stats: dict, errors: list[ErrorRecord], folder: Path) -> list[dict]:
    """The summary plots as PNGs in `folder`; `[{"title", "src"}]` in page order."""
    from matplotlib.figure import Figure  # the object API: no pyplot state, Agg canvas for PNG

    accepted = [r for r in rows if r.status == "accepted"]
    plots = []
    for name, title, draw in (
        ("zooms", "Zooms per resolution (accepted)", partial(_zooms_per_resolution, accepted)),
        ("box-area", "Zoom box area distribution", partial(_box_areas, accepted)),
        ("funnel", "Accept / reject funnel", partial(_funnel_bars, funnel(stats, errors))),
        ("question-types", "Question types", partial(_question_types, rows)),
    ):
        figure = Figure(figsize=(4.8, 3.2), dpi=100, layout="constrained")
        axes = figure.subplots()
        draw(axes)
        axes.set_title(title, fontsize=10)
        figure.savefig(folder / f"plot-{name}.png")
        plots.append({"title": title, "src": f"plot-{name}.png"})
    return plots


def _zooms_per_resolution(accepted: list[PlotRow], axes) -> None:
    counts = Counter((r.resolution, r.zooms) for r in accepted)
    resolutions = sorted({r for r, _ in counts})
    labels = [str(r) for r in resolutions]
    bottom = [0] * len(resolutions)
    for zooms in sorted({z for _, z in counts}):
        heights = [counts[(r, zooms)] for r in resolutions]
        axes.bar(labels, heights, bottom=bottom, label=f"{zooms} zoom{'s' if zooms != 1 else ''}")
        bottom = [b + h for b, h in zip(bottom, heights)]
    axes.set_xlabel("resolution budget R")
    axes.set_ylabel("accepted trajectories")
    if counts:
        axes.legend(fontsize=8)


def _box_areas(accepted: list[PlotRow], axes) -> None:
    fractions = [f for r in accepted for f in r.box_fractions]
    if fractions:
        low = min(-1, math.floor(math.log10(min(fractions))))  # at least one decade of bins
        bins = [10 ** (low + i / 8) for i in range(8 * -low + 1)]
        axes.hist(fractions, bins=bins)
        axes.set_xscale("log")
    axes.set_xlabel("zoom box area / frame area")
    axes.set_ylabel("chain boxes")


def _funnel_bars(steps: list[tuple[str, int]], axes) -> None:
    names, values = [n for n, _ in steps][::-1], [v for _, v in steps][::-1]
    bars = axes.barh(names, values)
    axes.bar_label(bars, fontsize=8)
    axes.set_xlabel("trajectories")


def _question_types(rows: list[PlotRow], axes) -> None:
    counts = Counter((r.question_type, r.status) for r in rows)
    kinds = sorted({q for q, _ in counts})
    left = [0] * len(kinds)
    for status in ("accepted", "rejected"):
        widths = [counts[(q, status)] for q in kinds]
        axes.barh(kinds, widths, left=left, label=status)
        left = [a + b for a, b in zip(left, widths)]
    axes.set_xlabel("trajectories")
    if counts:
        axes.legend(fontsize=8)


def _box_key(box: Box) -> str:
    return json.dumps([int(v) for v in box])


def _write_text(path: Path, text: str) -> None:
    with AtomicFile(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
