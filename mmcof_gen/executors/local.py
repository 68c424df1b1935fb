"""The local executor: worker threads in this process, each with its own models.

Images are pulled from the stream only as threads free up (at most two per thread in flight), so
memory stays flat on any folder size. OCR inference releases the GIL, so threads do run in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from mmcof_gen.progress import LiveStatus
from mmcof_gen.schema import ImageTasks
from mmcof_gen.tasks.sources import ImageUnit
from mmcof_gen.worker import ImageWorker, Record


def run_local(
    units: Iterable[ImageUnit],
    make_worker: Callable[[], ImageWorker],
    write: Callable[[Record], None],
    cached: dict[str, ImageTasks],
    done: set[str],
    workers: int = 1,
    status: LiveStatus | None = None,
) -> None:
    """Process every unit, handing each record to `write` as soon as it exists."""
    def process(worker: ImageWorker, unit: ImageUnit) -> None:
        if status:
            status.image_started()
        for record in worker.process(unit, cached.get(unit.rel), done):
            write(record)
        if status:
            status.image_finished()

    if workers == 1:
        with make_worker() as worker:
            for unit in units:
                process(worker, unit)
        return

    local = threading.local()
    made: list[ImageWorker] = []

    def job(unit: ImageUnit) -> None:
        if not hasattr(local, "worker"):
            local.worker = make_worker()
            made.append(local.worker)
        process(local.worker, unit)

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmcof-worker") as pool:
            in_flight: set[Future] = set()
            for unit in units:
                if len(in_flight) >= 2 * workers:
                    finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    for future in finished:
                        future.result()
                in_flight.add(pool.submit(job, unit))
            for future in in_flight:
                future.result()
    finally:
        for worker in made:
            worker.close()
