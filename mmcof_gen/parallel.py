"""A process pool for post-processing (filter, export, view): results come back in input order, so output
bytes never depend on the number of processes, and only a few items are in flight at a time, so memory
stays flat however long the input is.

Workers start with `forkserver`, not `fork`: the parent may already run threads (Arrow's, when writing
Parquet), and a forked copy of a lock held by one of them would hang the child.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

IN_FLIGHT_PER_JOB = 2  # enough to keep every worker busy while the parent writes the previous result


def default_jobs() -> int:
    """All the cores this process may use (a container's or a batch job's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ordered_map(fn: Callable[[Item], Result], items: Iterable[Item], jobs: int,
                initializer: Callable | None = None, initargs: tuple = ()) -> Iterator[Result]:
    """`map(fn, items)` across `jobs` processes (in this process when `jobs` is 1), in input order.

    `fn`, `initializer` and the items must pickle (module-level functions, plain data). An exception in
    `fn` is raised here, at that item.
    """
    if jobs <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(fn, items)
        return
    context = get_context("forkserver")
    # The server imports the work's modules once; each worker is then a fork of it, ready in milliseconds.
    context.set_forkserver_preload(sorted({getattr(f, "func", f).__module__ for f in (fn, initializer) if f}))
    parent_alive, alive = context.Pipe(duplex=False)  # only this process holds `alive`: EOF means it is gone
    try:
        with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                                 initargs=(parent_alive, initializer, initargs)) as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= IN_FLIGHT_PER_JOB * jobs:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        alive.close()
        parent_alive.close()


def _start_worker(parent_alive: Connection, initializer: Callable | None, initargs: tuple) -> None:
    """A worker ends when the command that started it dies: killed (SIGKILL, the OOM killer), the pool's
    own shutdown never runs, and its workers and the fork server would wait on their queue for ever."""
    def watch() -> None:
        try:
            parent_alive.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)
