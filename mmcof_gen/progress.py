"""The driver's live status of a synthesis: what is done, what is in flight, how fast, at what cost.

Counts come from the records as they are written (the records `mmcof-gen stats` reads later), and the
model usage from the calls each trajectory's steps carry, so the live line, the summary and the run
folder agree. Rates are averages since this invocation started; resumed work is counted apart.

    images 9/100 | resumed 12 | accepted 40 rejected 3 errors 1 | in flight 16 | 2.1 tasks/s | 180 req/min 95k tok/min | $0.41 (projected $3.90)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from mmcof_gen.schema import ErrorRecord, ImageTasks, Trajectory


class LiveStatus:
    """Counts records and images in flight; shown as one refreshing line while a run goes on.

    Thread-safe: the local executor writes from its worker threads. `images` is the number of images this
    invocation visits, known once the source has given the last (`counted`): the folder is never walked
    twice. It turns the cost per finished image into a projected cost.
    """

    def __init__(self, console: Console, resumed: int = 0, images: int | None = None):
        self.resumed = resumed
        self.images = images
        self.counts = {"accepted": 0, "rejected": 0, "errors": 0}
        self.in_flight = 0
        self.images_finished = 0
        self.requests = self.tokens = 0
        self.cost_usd = 0.0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  console=console, transient=False)
        self._line = self._progress.add_task("")

    def __enter__(self) -> LiveStatus:
        self._progress.start()
        self._refresh()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._progress.stop()
        if exc_type is None:  # a failed run ends with its error line instead
            self._progress.console.print(self.summary())

    # -- events --------------------------------------------------------------------------------------
    def counted(self, units: Iterable) -> Iterator:
        """`units` as they stream; their number becomes the total once the last has been given."""
        count = 0
        for unit in units:
            count += 1
            yield unit
        self.images = count
        self._refresh()

    def record(self, record: Trajectory | ErrorRecord | ImageTasks) -> None:
        with self._lock:
            if isinstance(record, Trajectory):
                self.counts[record.status] += 1
                for call in (call for step in record.steps for call in step.calls):
                    self.requests += 1 + call.retries
                    self.tokens += call.prompt_tokens + call.completion_tokens
                    self.cost_usd += call.cost_usd
            elif isinstance(record, ErrorRecord):
                self.counts["errors"] += 1
        self._refresh()

    def image_started(self) -> None:
        with self._lock:
            self.in_flight += 1
        self._refresh()

    def image_finished(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.images_finished += 1
        self._refresh()

    # -- what is shown -------------------------------------------------------------------------------
    def line(self) -> str:
        minutes = max(time.monotonic() - self._start, 1e-9) / 60
        c = self.counts
        tasks = c["accepted"] + c["rejected"] + c["errors"]
        projected = ""
        if self.images and self.images_finished:
            projected = f" (projected ${self.cost_usd / self.images_finished * self.images:.2f})"
        images = f"images {self.images_finished}" + (f"/{self.images}" if self.images else "")
        return (f"{images} | resumed {self.resumed} | accepted {c['accepted']} rejected {c['rejected']} errors {c['errors']} | "
                f"in flight {self.in_flight} | {tasks / minutes / 60:.2f} tasks/s | "
                f"{self.requests / minutes:.0f} req/min {self.tokens / minutes / 1000:.1f}k tok/min | "
                f"${self.cost_usd:.2f}{projected}")

    def summary(self) -> str:
        seconds = time.monotonic() - self._start
        c = self.counts
        tasks = c["accepted"] + c["rejected"] + c["errors"]
        return (f"done in {seconds:.1f}s: {c['accepted']} accepted, {c['rejected']} rejected, {c['errors']} errors "
                f"({self.resumed} resumed); {tasks / max(seconds, 1e-9):.2f} tasks/s; {self.requests} requests, "
                f"{self.tokens} tokens, ${self.cost_usd:.4f}")

    def _refresh(self) -> None:
        self._progress.update(self._line, description=self.line())
