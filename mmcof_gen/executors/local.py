"""The local executor: worker threads in this process, each with its own models (executors/sink.py has the
contract).

Images are pulled from the stream only as threads free up (at most two per thread in flight), so
memory stays flat on any folder size. OCR inference releases the GIL, so threads do run in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from mmcof_gen.executors.sink import RecordSink
from mmcof_gen.tasks.sources import ImageUnit
from mmcof_gen.worker import ImageWorker, WorkerFactory


def run_local(units: Iterable[ImageUnit], make_worker: WorkerFactory, sink: RecordSink) -> None:
    """Process every unit on `executor.workers` threads, handing each record to `sink` as soon as it exists."""
    workers = make_worker.config.executor.workers

    def process(worker: ImageWorker, unit: ImageUnit) -> None:
        sink.image_started()
        for record in worker.process(unit, sink):
            sink.write(record)
        sink.image_finished()

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
