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
from collections.abc import Callable, Coroutine, Generator, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import Any, Protocol

from PIL import Image

from mmcof_gen.agent import build_agent
from mmcof_gen.agent.base import SearchResult
from mmcof_gen.config import PipelineConfig
from mmcof_gen.imaging import ImageError, file_sha256, frame_size, image_sha256, image_size, make_frame
from mmcof_gen.models.chat import ServerLimitError
from mmcof_gen.models.detector import Detector
from mmcof_gen.models.ocr import OcrEngine
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import ErrorRecord, ImageTasks, Provenance, Task, Trajectory, View, short_hash, trajectory_id
from mmcof_gen.tasks import GIVEN, TASK_MAKERS
from mmcof_gen.tasks.base import TaskMaker, TasksFailed
from mmcof_gen.tasks.sources import ImageUnit

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


@dataclass(frozen=True)
class WorkerFactory:
    """What every worker of a run is built from, in this process or in a Ray actor (it travels pickled);
    the executors read their settings from its config."""

    config: PipelineConfig
    prompts: Prompts
    provenance: Provenance

    def __call__(self, shared_detector: Detector | None = None) -> ImageWorker:
        return ImageWorker(self.config, self.prompts, self.provenance, shared_detector)


class AgentLoop:
    """The worker's event loop, in a thread of its own: the agent's searches and the task writer's calls run on it
    whichever thread submits them, so that their model clients (which belong to one loop) are shared by all."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mmcof-agent-loop", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    @property
    def closed(self) -> bool:
        return self.loop.is_closed()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class BuiltOnce:
    """Parts made on first use, once, though a Ray actor calls `process` from several threads: a worker that never
    meets a bare image never builds its OCR engine or its task writer."""

    def __init__(self):
        self.parts: dict[str, Any] = {}
        self._building = threading.Lock()

    def get(self, name: str, build: Callable[[], Any]) -> Any:
        with self._building:
            if name not in self.parts:
                self.parts[name] = build()
            return self.parts[name]


class SearchWindow:
    """The searches of one image in flight, each record out as soon as its search finishes (in the order they were
    started, when several finish together), with at most `size` in flight: a CPU-bound agent has one, so its
    records come in order; any other has them all."""

    def __init__(self, size: float):
        self.size = size
        self.searches: dict[Future, tuple[int, Task, View]] = {}
        self._order = itertools.count()

    def add(self, search: Future, task: Task, view: View) -> None:
        self.searches[search] = (next(self._order), task, view)

    def finished(self, leave: float | None = None) -> Iterator[tuple[Future, Task, View]]:
        """Finished searches, until fewer than `leave` (the window's size) are in flight."""
        searches = self.searches
        while len(searches) >= (leave or self.size):
            done, _ = wait(searches, return_when=FIRST_COMPLETED)
            for search in sorted(done, key=lambda search: searches[search][0]):
                _, task, view = searches.pop(search)
                yield search, task, view

    def cancel(self) -> None:
        """The caller stopped early (its run failed): no search goes on without it."""
        for search in self.searches:
            search.cancel()


def distinct_resolutions(size: tuple[int, int], resolutions: list[int]) -> Iterator[int]:
    """The resolutions whose working frames differ. An image smaller than several budgets R has the same frame at
    each of them (same size, same pixels): only the first of those R is searched, so no frame makes two samples
    of one question."""
    sizes: set[tuple[int, int]] = set()
    for resolution in resolutions:
        frame = frame_size(*size, resolution)
        if frame not in sizes:
            sizes.add(frame)
            yield resolution


class ImageWorker:
    """Turns images into records: image -> tasks -> frames -> searches -> records. Holds the models, one set per
    local worker thread or Ray actor: the agent's, the OCR engine and the task makers, each built once."""

    def __init__(self, config: PipelineConfig, prompts: Prompts, provenance: Provenance,
                 shared_detector: Detector | None = None):
        """`shared_detector` (the Ray executor's proxy to its detector actors) stands in for a model of
        `config.models.detector` built in this worker."""
        self.config = config
        self.prompts = prompts
        self.provenance = provenance
        self.built = BuiltOnce()  # the OCR engine
        self.makers = BuiltOnce()  # the task makers, by their class
        self.agent = build_agent(config, prompts, lambda: self.engine, shared_detector)
        self.loop = AgentLoop()

    def __enter__(self) -> ImageWorker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the agent's and the task makers' chat clients on this worker's event loop, then the loop. Left
        to the garbage collector, connections are closed on whatever loop runs then, or never: "Event loop is
        closed" tracebacks and unclosed-resource warnings at shutdown. Closing twice is harmless."""
        if self.loop.closed:
            return
        self.loop.run(self.agent.aclose()).result()
        for maker in self.makers.parts.values():
            maker.close()
        self.loop.close()

    @property
    def engine(self) -> OcrEngine:
        """Built on first use: the OCR agent's locator and reader, and the OCR task maker's reader."""
        ocr, executor = self.config.ocr, self.config.executor
        return self.built.get("engine", lambda: OcrEngine(ocr.tile_size, ocr.tile_overlap, ocr.min_score,
                                                          executor.ocr_threads_per_worker()))

    def maker(self, unit: ImageUnit) -> TaskMaker:
        """The image's task maker: the given questions' when its source gives them, else the one of tasks.kind."""
        kind = GIVEN if unit.questions is not None else TASK_MAKERS[self.config.tasks.kind]
        return self.makers.get(kind.cls, lambda: kind.load().build(self.config, self.prompts, lambda: self.engine,
                                                                    self.agent, self.loop.run))

    def process(self, unit: ImageUnit, resume: Resume) -> Iterator[Record]:
        if unit.skipped is not None:
            yield ErrorRecord(id="skip-" + short_hash(unit.rel), stage="skipped", image=unit.rel,
                              reason=f"skipped: {unit.skipped}")
            return
        try:
            sha, size = file_sha256(unit.path), image_size(unit.path, self.config.images.max_pixels)
            tasks = yield from self._tasks(unit, sha, size, resume)
        except (ImageError, OSError) as exc:
            yield ErrorRecord(id=image_error_id(unit.rel), stage="image", image=unit.rel, reason=_reason(exc))
            return
        except TasksFailed as exc:
            cause = exc.__cause__
            yield ErrorRecord(id="tasks-" + short_hash(unit.rel), stage="tasks", image=unit.rel,
                              reason=f"task synthesis: {_reason(cause)}", transient=_transient(cause))
            return
        yield from self._searches(unit, tasks, size, resume)

    def _tasks(self, unit: ImageUnit, sha: str, size: tuple[int, int],
               resume: Resume) -> Generator[Record, None, list[Task]]:
        """The image's tasks: an earlier run's when the image's bytes are the same, else its maker's (their record
        and the problems met go out)."""
        cached = resume.tasks(unit.rel)
        if cached is not None and cached.image_sha256 == sha:
            return cached.tasks
        made, problems = self.maker(unit).make(unit, sha, size)
        yield from problems
        yield made
        return made.tasks

    def _searches(self, unit: ImageUnit, tasks: list[Task], size: tuple[int, int],
                  resume: Resume) -> Iterator[Record]:
        """Every pending (task, R) of the image searched on this worker's event loop, in a `SearchWindow`."""
        window = SearchWindow(1 if self.agent.cpu_bound else math.inf)
        try:
            for resolution in distinct_resolutions(size, self.config.resolutions):
                pending = [t for t in tasks if not resume.done(trajectory_id(t.id, resolution))]
                if not pending:
                    continue
                try:  # made while the last search runs
                    frame = make_frame(unit.path, resolution, self.config.images.max_pixels, size)
                except (ImageError, OSError) as exc:
                    frame = exc
                yield from self._records(window)
                if isinstance(frame, Exception):
                    for task in pending:
                        yield self._error(task, resolution, frame)
                    continue
                view = _view(frame, resolution, size)
                for task in pending:
                    yield from self._records(window)
                    window.add(self.loop.run(self.agent.run(task, frame, view)), task, view)
            yield from self._records(window, 1)
        finally:
            window.cancel()

    def _records(self, window: SearchWindow, leave: float | None = None) -> Iterator[Record]:
        """The records of the window's finished searches (`SearchWindow.finished`)."""
        for search, task, view in window.finished(leave):
            try:
                yield self._trajectory(task, view, search.result())
            except ServerLimitError:  # every other search would hit it too: the run stops
                raise
            except Exception as exc:  # one bad sample never ends the run: it becomes an error record
                yield self._error(task, view.resolution, exc)

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


def _view(frame: Image.Image, resolution: int, size: tuple[int, int]) -> View:
    return View(resolution=resolution, width=frame.width, height=frame.height, original_width=size[0],
                original_height=size[1], frame_sha256=image_sha256(frame))


def _transient(exc: Exception) -> bool:
    """A failure a later run may not meet (a model out of reach after its retries, a search out of wall time
    on a loaded machine): such exceptions carry `transient = True`."""
    return getattr(exc, "transient", False) is True


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ImageError) else f"{type(exc).__name__}: {text}"
