"""The executor contract, and the sink every executor hands its records to.

An executor is a function `run(units, make_worker, sink)`: it builds workers with `make_worker` (a
`worker.WorkerFactory`, which also carries the config), has them process every unit, and gives each
record to `sink` (or, when a Ray actor wrote the record to its own shard, tells `sink` it was written).
`executors/local.py` (threads) and `executors/ray.py` (actors) are the two.

The sink owns what must be right once per run whatever the executor does: each record id written once,
and the resume state (the ids done, the task lists of earlier runs), read and changed under its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from pathlib import Path

from mmcof_gen.progress import LiveStatus
from mmcof_gen.schema import ErrorRecord, ImageTasks, Trajectory
from mmcof_gen.store import RunStore
from mmcof_gen.worker import Record


class RecordSink:
    """Writes records to a run folder exactly once and counts them in the live status; a `worker.Resume`."""

    def __init__(self, store: RunStore, status: LiveStatus | None = None):
        self.store = store
        self.status = status
        self._lock = threading.Lock()  # worker threads write; two copies of one image make the same ids
        self._done = store.done_ids()
        self._tasks = {item.image: item for item in store.image_tasks()}
        self.resumed = len(self._done)
        if status:
            status.resumed = self.resumed

    @property
    def run_dir(self) -> Path:
        return self.store.root

    def tasks(self, image: str) -> ImageTasks | None:
        return self._tasks.get(image)  # filled once, never changed: no lock needed

    def done(self, record_id: str) -> bool:
        with self._lock:
            return record_id in self._done

    def done_among(self, ids: Iterable[str]) -> frozenset[str]:
        with self._lock:
            return frozenset(id_ for id_ in ids if id_ in self._done)

    def write(self, record: Record) -> None:
        """Append `record` to the run folder, unless a search's record of that id is there already."""
        with self._lock:
            if isinstance(record, (Trajectory, ErrorRecord)):
                if record.id in self._done:  # exactly once, whatever an executor retried
                    return
                self._done.add(record.id)
            self.store.append(record)
            self._count(record)

    def written(self, record: Record) -> None:
        """A record another writer appended to its shard of the run folder (a Ray actor made sure of once)."""
        with self._lock:
            self._done.add(record.id)
            self._count(record)

    def image_started(self) -> None:
        if self.status:
            self.status.image_started()

    def image_finished(self) -> None:
        if self.status:
            self.status.image_finished()

    def _count(self, record: Record) -> None:
        if self.status:
            self.status.record(record)
