"""The executors by name (`executor.kind`, `synthesize --executor`): the one registry that config validation,
the CLI's choices, the extras check and `synthesize` read. A new executor is one module with a function
`run(units, make_worker, sink)` (executors/sink.py) and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mmcof_gen.schema import named_object


@dataclass(frozen=True)
class Executor:
    """One executor: its run function ("module:function", imported only when a run starts, so an optional
    extra is imported only then), the extra it needs, and how it spreads the work."""

    run: str
    extra: str | None = None
    one_cpu_per_worker: bool = False
    """each worker holds one CPU (a Ray actor), so a worker's OCR engine runs one thread"""
    cluster: bool = False
    """it joins a cluster at `executor.address` and bounds the images in flight (`--ray-address`, `--max-in-flight`)"""

    def runner(self) -> Callable:
        return named_object(self.run)


EXECUTORS: dict[str, Executor] = {
    "local": Executor("mmcof_gen.executors.local:run_local"),
    "ray": Executor("mmcof_gen.executors.ray:run_ray", extra="ray", one_cpu_per_worker=True, cluster=True),
}
