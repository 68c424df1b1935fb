"""Where the Ray executor's overhead goes at 64 searches in flight: CPU per model call by process, and a profile
of one agent actor and of the driver.

Run from the checkout (py-spy, `pip install py-spy`, is optional: without it only the CPU table is printed):
  RAY_AUTH_MODE=disabled PYTHONPATH=. .venv/bin/python benchmarks/profile_throughput.py [--rounds 16]

Runs part 1 of bench_throughput.py at 64 in flight (the scripted server in its own process, 0.2 s per reply,
2 agent actors) while sampling every process's CPU time, grouped as the agent actors, the driver (executor,
ledger, streaming, then the no-Ray baseline), Ray's own processes and the scripted server; divides each by the
model calls made. With py-spy, one actor and the driver are sampled for the same 12 s of the run and the frames
their time is spent in (inclusive, as a share of their busy samples) are printed. Inclusive shares count a thread
waiting for the GIL as busy in the frame it waits in: a frame that releases the GIL (a file write, an fsync)
shows more than its CPU.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import ray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import bench_throughput  # noqa: E402

IN_FLIGHT = 64


def group(process: psutil.Process) -> str | None:
    """Which part of the run a process is (None: not the run's)."""
    command = " ".join(process.cmdline())
    if process.pid == os.getpid():
        return "driver"
    if "AgentActor" in command:
        return "agent actors"
    if "spawn_main" in command:
        return "scripted server"
    if "ray" in command:
        return "ray system"
    return None


class CpuSampler(threading.Thread):
    """CPU seconds per process between start and stop, each counted under the group it ended in (a Ray worker
    starts idle and becomes an actor)."""

    def __init__(self, spy_after: float, profiles: Path | None):
        super().__init__(daemon=True)
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.spy_after, self.profiles = spy_after, profiles

    def run(self) -> None:
        start, spied = time.perf_counter(), self.profiles is None
        while not self.stop.is_set():
            for process in psutil.process_iter():
                try:
                    name, times = group(process), process.cpu_times()
                except psutil.Error:
                    continue
                if name is not None:
                    self.first.setdefault(process.pid, times.user + times.system)
                    self.last[process.pid] = name, times.user + times.system
                    if not spied and name == "agent actors" and time.perf_counter() - start > self.spy_after:
                        spied = True
                        for pid, spied_on in ((process.pid, "actor"), (os.getpid(), "driver")):
                            subprocess.Popen(["py-spy", "record", "-p", str(pid), "-d", "12", "-r", "50", "-f",
                                              "raw", "-o", str(self.profiles / f"{spied_on}.txt"), "--nonblocking"],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)

    def totals(self) -> dict[str, float]:
        found: dict[str, float] = collections.Counter()
        for pid, (name, seconds) in self.last.items():
            found[name] += seconds - self.first[pid]
        return found


def frames(profile: Path, top: int) -> list[tuple[float, str]]:
    """py-spy's raw output as (share of samples, frame) for the frames most time is spent in, inclusive."""
    total, inclusive = 0, collections.Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        total += int(count)
        for name in {frame.split(" (")[0] for frame in stack.split(";")}:
            inclusive[name] += int(count)
    return [(count / total, name) for name, count in inclusive.most_common(top) if name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16, help="rounds of 64 searches in the Ray run")
    args = parser.parse_args()
    urls = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=bench_throughput.serve, args=(urls,), daemon=True)
    server.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        profiles = Path(tmp) if shutil.which("py-spy") else None
        sampler = CpuSampler(spy_after=8, profiles=profiles)
        sampler.start()
        try:
            bench_throughput.concurrency(urls.get(timeout=60), Path(tmp), [IN_FLIGHT], rounds=args.rounds)
        finally:
            sampler.stop.set()
            sampler.join()
            ray.shutdown()
            server.terminate()
        calls = (IN_FLIGHT * args.rounds + IN_FLIGHT) * bench_throughput.CALLS_PER_TASK  # Ray run, then baseline
        print(f"\nCPU per model call ({calls} calls)")
        for name, seconds in sorted(sampler.totals().items(), key=lambda item: -item[1]):
            print(f"{name:<16} {seconds:7.1f} CPU s  {1000 * seconds / calls:6.2f} ms per call")
        for spied_on, title in (("actor", "one agent actor"), ("driver", "the driver")):
            profile = profiles / f"{spied_on}.txt" if profiles else None
            if profile is not None and profile.exists():
                print(f"\n{title}, 12 s of the run: frames by share of its busy samples (inclusive)")
                for share, name in frames(profile, 40):
                    print(f"{share:6.1%}  {name}")


if __name__ == "__main__":
    main()
