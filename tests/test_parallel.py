"""`--jobs`: filter, export and view make the same bytes with one process and with two, and the pool
gives results in input order."""

import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mmcof_gen import replay
from mmcof_gen.export import export
from mmcof_gen.filtering import filter_run
from mmcof_gen.config import FilterConfig
from mmcof_gen.parallel import ordered_map
from mmcof_gen.report import write_report
from tests.support.runs import make_trajectory, write_noise_image, write_run


def test_ordered_map_keeps_input_order_and_raises_a_worker_error_at_its_item():
    assert list(ordered_map(abs, range(-20, 0), jobs=2)) == list(range(20, 0, -1))
    results = ordered_map(int, ["1", "2", "x", "4"], jobs=2)
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(ValueError, match="invalid literal for int"):
        next(results)


WORKER_PIDS = """
import os, sys, time
from mmcof_gen.parallel import ordered_map

def slow_pid(item):
    time.sleep(0.05)
    return os.getpid()

if __name__ == "__main__":
    for pid in ordered_map(slow_pid, range(100000), 2):
        print(pid, flush=True)
"""


def test_workers_end_when_the_command_that_started_them_is_killed(tmp_path):
    # SIGKILL (or the OOM killer) skips the pool's shutdown; workers once waited on their queue for ever
    script = tmp_path / "pool.py"
    script.write_text(WORKER_PIDS, encoding="utf-8")
    command = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    workers = set()
    while len(workers) < 2:
        workers.add(int(command.stdout.readline()))
    command.kill()
    command.wait()
    deadline = time.monotonic() + 120  # a bound on waiting, not a timing claim: they go within a second idle
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if _running(pid)]


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def run(tmp_path):
    images = tmp_path / "images"
    trajectories = []
    for n in range(6):
        name = f"{n}.png"
        write_noise_image(images / name, (500 + 20 * n, 400), seed=n)
        trajectories += [make_trajectory(images, name, 448, boxes=[(10, 10, 200, 150), (50, 40, 120, 90)]),
                         make_trajectory(images, name, 448, question="Is there a door?"),
                         make_trajectory(images, name, 224, boxes=[(20, 20, 90, 80)], question="Which word?"),
                         make_trajectory(images, name, 224, question="Rejected?", status="rejected", correct=False)]
    run_dir = write_run(tmp_path / "run", images, trajectories)
    write_noise_image(images / "3.png", (560, 400), seed=99)  # changed after synthesis: re-execution drops it
    return run_dir


def outputs(folder, skip=()):
    """Every file under `folder` (relative name -> bytes), without those named in `skip`."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in skip}


def test_filter_export_and_view_write_the_same_bytes_with_one_and_two_processes(tmp_path, run, monkeypatch):
    monkeypatch.setattr(replay, "BATCH", 1)  # a batch per image, so both workers have work in flight
    made = {}
    for jobs in (1, 2):
        out = tmp_path / f"jobs{jobs}"
        filtered = filter_run(run, out / "filtered", FilterConfig(), jobs=jobs)
        exported = export(run, "sharegpt", out / "export", jobs=jobs)
        write_report(run, out / "report" / "report.html", jobs=jobs)
        reports = {"filter": {k: v for k, v in filtered.items() if k != "output"},
                   "export": {k: v for k, v in exported.items() if k != "output"}}
        made[jobs] = (reports, outputs(out, skip={"manifest.json", "filter_report.json", "export_report.json",
                                                 "README.md", ".mmcof-filter", ".mmcof-export"}))
    assert made[1] == made[2]
    reports, files = made[2]
    assert [(r["id"][-4:], r["rule"]) for r in reports["filter"]["dropped_records"]].count(("r448", "reexecution")) == 2
    assert reports["export"]["dropped"] == 3 and reports["export"]["samples"] == 6 * 3 - 3
    assert len(json.loads(files["export/mmcof.json"])) == 15
    assert sum(name.startswith("report/report_files/cards-") for name in files) == 1
