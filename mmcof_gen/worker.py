"""The work on one image, the same under every executor: tasks, then a search per (task, resolution).

A worker yields records as it finishes them (task list, trajectories, errors); the executor writes
them, so a killed run loses at most the search in progress.

A vlm worker runs every search on one event loop of its own, in a thread of its own: `process` may be
called from several threads at once (a Ray agent actor works on many images), and all their searches
share the loop and its model clients, so one worker keeps many requests in flight to the server.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from PIL import Image

from mmcof_gen.agent.ocr_search import OcrSearchAgent, SearchResult
from mmcof_gen.agent.search import Roles, VlmSearchAgent
from mmcof_gen.config import PipelineConfig
from mmcof_gen.imaging import (ImageError, file_sha256, frame_size, image_sha256, image_size, load_image, make_frame,
                               validate_box)
from mmcof_gen.models.chat import ServerLimitError, chat_model
from mmcof_gen.models.detect import Detector
from mmcof_gen.models.ocr import OcrEngine
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import (ErrorRecord, ImageTasks, Provenance, Task, Trajectory, View, short_hash, task_id,
                              trajectory_id)
from mmcof_gen.tasks.sources import ImageUnit
from mmcof_gen.tasks.synthesis import TaskWriter, task_prompts
from mmcof_gen.tasks.text_questions import synthesize_text_tasks, word_gaps

Record = ImageTasks | Trajectory | ErrorRecord


def image_error_id(rel: str) -> str:
    return "img-" + short_hash(rel)


def truth_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size ground truth is read at: the original, or smaller when it holds more than max_pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


class ImageWorker:
    """Holds the models (one set per local worker thread or Ray actor) and turns images into records."""

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
        if config.agent.kind == "vlm":
            self.agent = VlmSearchAgent(Roles.build(config.models, shared_detector), prompts, config.agent)
            self.loop = asyncio.new_event_loop()
            self._loop_thread = threading.Thread(target=self.loop.run_forever, name="mmcof-agent-loop", daemon=True)
            self._loop_thread.start()
        else:
            self.agent = OcrSearchAgent(self.engine, prompts, config.agent, config.ocr.min_read_height)

    def __enter__(self) -> ImageWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the chat clients on this worker's event loop, then the loop (a vlm worker; an ocr one holds
        neither). Left to the garbage collector, connections are closed on whatever loop runs then, or never:
        "Event loop is closed" tracebacks and unclosed-resource warnings at shutdown. Closing twice is harmless."""
        if self.config.agent.kind != "vlm" or self.loop.is_closed():
            return
        roles = self.agent.roles
        models = {roles.planner, roles.reader, roles.locator, roles.judge, roles.summariser} - {None}
        if "task_writer" in self._parts:  # built: its writer may be a model of its own
            models |= {self.task_writer.writer, self.task_writer.second_reader, self.task_writer.small_reader} - {None}
        for model in models:
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
        """Built on first use: the vlm agent needs OCR only to synthesise text tasks for bare folders."""
        ocr, executor = self.config.ocr, self.config.executor
        return self._built("engine", lambda: OcrEngine(ocr.tile_size, ocr.tile_overlap, ocr.min_score,
                                                       executor.ocr_threads_per_worker()))

    def process(self, unit: ImageUnit, cached: ImageTasks | None, done: set[str]) -> Iterator[Record]:
        if unit.skipped is not None:
            yield ErrorRecord(id="skip-" + short_hash(unit.rel), stage="skipped", image=unit.rel,
                              reason=f"skipped: {unit.skipped}")
            return
        max_pixels = self.config.images.max_pixels
        try:
            sha = file_sha256(unit.path)
            width, height = image_size(unit.path, max_pixels)
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
        if self.config.agent.kind == "vlm":
            yield from self._vlm_trajectories(unit, tasks, width, height, done)
            return

        for resolution, pending, frame in self._frames(unit, tasks, done):
            try:
                if isinstance(frame, Exception):
                    raise frame
                frame_hits = self.engine.read(frame)
            except (ImageError, OSError) as exc:
                for task in pending:
                    yield self._error(task, resolution, exc)
                continue
            view = _view(frame, resolution, width, height)
            for task in pending:
                try:
                    yield self._trajectory(task, view, self.agent.run(task, frame, view, frame_hits))
                except Exception as exc:  # one bad sample never ends the run: it becomes an error record
                    yield self._error(task, resolution, exc)

    def _vlm_trajectories(self, unit: ImageUnit, tasks: list[Task], width: int, height: int,
                          done: set[str]) -> Iterator[Record]:
        """Every pending (task, R) of the image searched concurrently on this worker's event loop; each
        record comes out as soon as its search finishes."""
        searches: dict[Future, tuple[Task, View]] = {}
        for resolution, pending, frame in self._frames(unit, tasks, done):
            if isinstance(frame, Exception):
                for task in pending:
                    yield self._error(task, resolution, frame)
                continue
            view = _view(frame, resolution, width, height)
            for task in pending:
                searches[self._on_loop(self.agent.run(task, frame, view))] = (task, view)
        try:
            while searches:
                finished, _ = wait(searches, return_when=FIRST_COMPLETED)
                for future in finished:
                    task, view = searches.pop(future)
                    try:
                        yield self._trajectory(task, view, future.result())
                    except ServerLimitError:  # every other search would hit it too: the run stops
                        raise
                    except Exception as exc:  # a failed model call (retries spent) becomes an error record
                        yield self._error(task, view.resolution, exc)
        finally:
            for future in searches:  # the caller stopped early (its run failed): no search goes on without it
                future.cancel()

    def _frames(self, unit: ImageUnit, tasks: list[Task],
                done: set[str]) -> Iterator[tuple[int, list[Task], Image.Image | Exception]]:
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
            pending = [t for t in tasks if trajectory_id(t.id, resolution) not in done]
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
            if self.config.tasks.kind == "vlm":
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
                lambda hit: word_gaps(image, hit.box))
            return record, []
        tasks: dict[str, Task] = {}
        problems = []
        for given in unit.questions:
            tid = task_id(sha, given.question)
            try:
                boxes = [validate_box(box, width, height) for box in given.boxes]
            except ValueError as exc:
                problems.append(ErrorRecord(id="q-" + tid, stage="tasks", image=unit.rel, task_id=tid,
                                            reason=f"bbox of question {given.question[:80]!r}: {exc}"))
                continue
            tasks[tid] = Task(id=tid, image=unit.rel, image_sha256=sha, question=given.question, options=given.options,
                              answer=given.answer, gt_boxes=boxes, source=unit.source,
                              question_type=given.question_type, position=given.position)
        record.tasks = list(tasks.values())
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
