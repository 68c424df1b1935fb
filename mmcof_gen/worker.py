"""The work on one image, the same under every executor: tasks, then a search per (task, resolution).

A worker yields records as it finishes them (task list, trajectories, errors); the executor writes
them, so a killed run loses at most the search in progress.

A worker runs every search of its agent (agent/base.py) on one event loop of its own, in a thread of its
own. An agent that waits on model servers has all its searches in flight at once: `process` may be called
from several threads at once (a Ray agent actor works on many images), and all their searches share the
loop and its model clients, so one worker keeps many requests in flight to the server. A CPU-bound agent's
searches run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from mmcof_gen.agent import build_agent
from mmcof_gen.agent.base import SearchResult
from mmcof_gen.config import PipelineConfig
from mmcof_gen.imaging import ImageError, file_sha256, frame_size, image_sha256, image_size, load_image, make_frame
from mmcof_gen.models.chat import ServerLimitError, chat_model
from mmcof_gen.models.detect import Detector
from mmcof_gen.models.ocr import OcrEngine
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import ErrorRecord, ImageTasks, Provenance, Task, Trajectory, View, short_hash, trajectory_id
from mmcof_gen.tasks import TASK_MAKERS
from mmcof_gen.tasks.sources import ImageUnit
from mmcof_gen.tasks.synthesis import TaskWriter, task_prompts
from mmcof_gen.tasks.text_questions import synthesize_text_tasks, word_gaps

Record = ImageTasks | Trajectory | ErrorRecord


class Resume(Protocol):
    """What is already done for an image: the executor's sink (executors/sink.py), or a snapshot (`Resumed`)."""

    def tasks(self, image: str) -> ImageTasks | None:
        """The image's task list from an earlier run (used when the image's bytes are the same)."""
        ...

    def done(self, record_id: str) -> bool:
        """Whether a search's record is written already (this run or an earlier one)."""
        ...


@dataclass(frozen=True)
class Resumed:
    """A `Resume` fixed when the image is sent (the Ray driver's, to an actor); empty: nothing done."""

    image_tasks: ImageTasks | None = None
    ids: frozenset[str] = frozenset()

    def tasks(self, image: str) -> ImageTasks | None:
        return self.image_tasks

    def done(self, record_id: str) -> bool:
        return record_id in self.ids


def image_error_id(rel: str) -> str:
    return "img-" + short_hash(rel)


def truth_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size ground truth is read at: the original, or smaller when it holds more than max_pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


@dataclass(frozen=True)
class WorkerFactory:
    """What every worker of a run is built from, in this process or in a Ray actor (it travels pickled);
    the executors read their settings from its config."""

    config: PipelineConfig
    prompts: Prompts
    provenance: Provenance

    def __call__(self, shared_detector: Detector | None = None) -> ImageWorker:
        return ImageWorker(self.config, self.prompts, self.provenance, shared_detector)


class ImageWorker:
    """Holds the models (one set per local worker thread or Ray actor: the agent's, the OCR engine and the task
    writer, each built once) and turns images into records."""

    def __init__(self, config: PipelineConfig, prompts: Prompts, provenance: Provenance,
                 shared_detector: Detector | None = None):
        """`shared_detector` (the Ray executor's proxy to its detector actors) stands in for a model of
        `config.models.detector` built in this worker."""
        self.config = config
        self.prompts = prompts
        self.provenance = provenance
        self.task_prompts = task_prompts(config)
        self._parts: dict[str, Any] = {}  # built on first use (`_built`)
        self._building = threading.Lock()
        self.agent = build_agent(config, prompts, lambda: self.engine, shared_detector)
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, name="mmcof-agent-loop", daemon=True)
        self._loop_thread.start()

    def __enter__(self) -> ImageWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the agent's and the task writer's chat clients on this worker's event loop, then the loop. Left
        to the garbage collector, connections are closed on whatever loop runs then, or never: "Event loop is
        closed" tracebacks and unclosed-resource warnings at shutdown. Closing twice is harmless."""
        if self.loop.is_closed():
            return
        self._on_loop(self.agent.aclose()).result()
        if "task_writer" in self._parts:  # built: its writer may be a model of its own (closing one twice is harmless)
            writer = self.task_writer
            for model in {writer.writer, writer.second_reader, writer.small_reader} - {None}:
                self._on_loop(model.aclose()).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join()
        self.loop.close()

    def _on_loop(self, coroutine: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def _built(self, name: str, build: Callable[[], Any]) -> Any:
        """A part made on first use, once, though a Ray actor calls `process` from several threads."""
        with self._building:
            if name not in self._parts:
                self._parts[name] = build()
            return self._parts[name]

    @property
    def engine(self) -> OcrEngine:
        """Built on first use: the OCR agent's locator and reader; a vlm worker needs it only to synthesise text
        tasks for bare folders."""
        ocr, executor = self.config.ocr, self.config.executor
        return self._built("engine", lambda: OcrEngine(ocr.tile_size, ocr.tile_overlap, ocr.min_score,
                                                       executor.ocr_threads_per_worker()))

    def process(self, unit: ImageUnit, resume: Resume) -> Iterator[Record]:
        if unit.skipped is not None:
            yield ErrorRecord(id="skip-" + short_hash(unit.rel), stage="skipped", image=unit.rel,
                              reason=f"skipped: {unit.skipped}")
            return
        max_pixels = self.config.images.max_pixels
        try:
            sha = file_sha256(unit.path)
            width, height = image_size(unit.path, max_pixels)
            cached = resume.tasks(unit.rel)
            if cached is not None and cached.image_sha256 == sha:
                tasks = cached.tasks
            else:
                image_tasks, problems = self._tasks(unit, sha, width, height)
                yield from problems
                if image_tasks is None:
                    return
                tasks = image_tasks.tasks
                yield image_tasks
        except (ImageError, OSError) as exc:
            yield ErrorRecord(id=image_error_id(unit.rel), stage="image", image=unit.rel, reason=_reason(exc))
            return
        yield from self._trajectories(unit, tasks, width, height, resume)

    def _trajectories(self, unit: ImageUnit, tasks: list[Task], width: int, height: int,
                      resume: Resume) -> Iterator[Record]:
        """Every pending (task, R) of the image searched on this worker's event loop, each record out as soon as
        its search finishes (in the order they were started, when several finish together). A CPU-bound agent
        has one search in flight, so its records come in order; any other has them all."""
        window = 1 if self.agent.cpu_bound else math.inf
        searches: dict[Future, tuple[int, Task, View]] = {}
        order = itertools.count()
        try:
            for resolution, pending, frame in self._frames(unit, tasks, resume):
                yield from self._finished(searches, window)
                if isinstance(frame, Exception):
                    for task in pending:
                        yield self._error(task, resolution, frame)
                    continue
                view = _view(frame, resolution, width, height)
                for task in pending:
                    yield from self._finished(searches, window)
                    searches[self._on_loop(self.agent.run(task, frame, view))] = (next(order), task, view)
            yield from self._finished(searches, 1)
        finally:
            for future in searches:  # the caller stopped early (its run failed): no search goes on without it
                future.cancel()

    def _finished(self, searches: dict[Future, tuple[int, Task, View]], window: float) -> Iterator[Record]:
        """The records of finished searches, until fewer than `window` are in flight."""
        while len(searches) >= window:
            finished, _ = wait(searches, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda future: searches[future][0]):
                _, task, view = searches.pop(future)
                try:
                    yield self._trajectory(task, view, future.result())
                except ServerLimitError:  # every other search would hit it too: the run stops
                    raise
                except Exception as exc:  # one bad sample never ends the run: it becomes an error record
                    yield self._error(task, view.resolution, exc)

    def _frames(self, unit: ImageUnit, tasks: list[Task],
                resume: Resume) -> Iterator[tuple[int, list[Task], Image.Image | Exception]]:
        """Each resolution with tasks still to do: its working frame, or why the frame could not be made.

        An image smaller than several budgets R has the same frame at each of them (same size, same pixels):
        only the smallest of those R is searched, so no frame makes two samples of one question."""
        sizes: set[tuple[int, int]] = set()
        for resolution in self.config.resolutions:
            try:
                size = frame_size(*image_size(unit.path, self.config.images.max_pixels), resolution)
            except (ImageError, OSError):
                size = None  # make_frame below says why
            if size in sizes:
                continue
            sizes.add(size)
            pending = [t for t in tasks if not resume.done(trajectory_id(t.id, resolution))]
            if not pending:
                continue
            try:
                frame = make_frame(unit.path, resolution, self.config.images.max_pixels)
            except (ImageError, OSError) as exc:
                frame = exc
            yield resolution, pending, frame

    @property
    def task_writer(self) -> TaskWriter:
        """tasks.kind vlm: the worker's reader and detector check and propose; the writer defaults to the planner."""
        roles, models = self.agent.roles, self.config.models

        def build() -> TaskWriter:
            writer = chat_model(models.task_writer) if models.task_writer else roles.planner
            second, small = (chat_model(m) if m else None for m in (models.second_reader, models.small_reader))
            return TaskWriter(writer, roles.reader, roles.detector, self.task_prompts, self.prompts, self.config,
                              second, small)

        return self._built("task_writer", build)

    def _tasks(self, unit: ImageUnit, sha: str, width: int,
               height: int) -> tuple[ImageTasks | None, list[ErrorRecord]]:
        """The image's tasks (None when synthesis failed: a resume tries again), and problems with given ones."""
        record = ImageTasks(id=unit.rel, image=unit.rel, image_sha256=sha, width=width, height=height, tasks=[])
        if unit.questions is None:
            size = truth_size(width, height, self.config.images.truth_max_pixels)
            image = load_image(unit.path, self.config.images.max_pixels, target_size=size)
            if image.size != size:
                image = image.resize(size, Image.LANCZOS)
            if TASK_MAKERS[self.config.tasks.kind].model_roles:
                frame = make_frame(unit.path, max(self.config.resolutions), self.config.images.max_pixels)
                try:
                    made = self._on_loop(self.task_writer.synthesize(image, frame, (width, height), unit.rel,
                                                                     sha)).result()
                except ServerLimitError:
                    raise
                except Exception as exc:  # a model out of reach: this image fails, the run goes on
                    return None, [ErrorRecord(id="tasks-" + short_hash(unit.rel), stage="tasks", image=unit.rel,
                                              reason=f"task synthesis: {_reason(exc)}", transient=_transient(exc))]
                return record.model_copy(update={"tasks": made.tasks, "rejected": made.rejected,
                                                 "calls": made.calls}), []
            hits = self.engine.read(image)
            record.tasks, record.rejected = synthesize_text_tasks(
                hits, size, (width, height), unit.rel, sha, self.task_prompts, self.config.tasks,
                lambda hit, line_height, unclip: self.engine.reread(image, hit.box, line_height, unclip),
                lambda hit: word_gaps(image, hit.box), lambda hit: self.engine.read_line(image, hit.box))
            return record, []
        record.tasks, problems = unit.given_tasks(sha, width, height)
        return record, problems

    def _trajectory(self, task: Task, view: View, result: SearchResult) -> Trajectory:
        return Trajectory(
            id=trajectory_id(task.id, view.resolution), task=task, view=view, steps=result.steps,
            chain=result.chain, final_thought=result.final_thought, answer=result.answer, verdict=result.verdict,
            needs_zoom=result.needs_zoom, provenance=self.provenance,
            status="accepted" if result.accepted else "rejected", reason=result.reason,
        )

    @staticmethod
    def _error(task: Task, resolution: int, exc: Exception) -> ErrorRecord:
        return ErrorRecord(id=trajectory_id(task.id, resolution), stage="trajectory", image=task.image,
                           task_id=task.id, resolution=resolution, reason=_reason(exc), transient=_transient(exc))


def _view(frame: Image.Image, resolution: int, width: int, height: int) -> View:
    return View(resolution=resolution, width=frame.width, height=frame.height, original_width=width,
                original_height=height, frame_sha256=image_sha256(frame))


def _transient(exc: Exception) -> bool:
    """A failure a later run may not meet (a model out of reach after its retries, a search out of wall time
    on a loaded machine): such exceptions carry `transient = True`."""
    return getattr(exc, "transient", False) is True


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ImageError) else f"{type(exc).__name__}: {text}"
