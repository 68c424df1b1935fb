"""Output folders know what made them: filter, export and view refuse an output of another run unless
--overwrite, which removes only the files that output recorded writing."""

from __future__ import annotations

import json
import pytest

from mmcof_gen.config import FilterConfig
from mmcof_gen.export import export
from mmcof_gen.filtering import filter_run
from mmcof_gen.report import write_report
from mmcof_gen.store import StoreError
from tests.support.runs import make_trajectory, write_noise_image, write_run


@pytest.fixture
def two_runs(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    write_noise_image(images / "b.png", (500, 500), seed=2)
    first = write_run(tmp_path / "runP", images, [make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150)])])
    second = write_run(tmp_path / "runS", images, [make_trajectory(images, "b.png", 448)])
    return first, second


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_export_refuses_an_export_of_another_run_and_overwrite_replaces_only_what_it_wrote(tmp_path, two_runs):
    run_p, run_s = two_runs
    out = tmp_path / "expS"
    export(run_s, "qwen", out)
    (out / "notes.txt").write_text("mine")  # a file the export did not write
    with pytest.raises(StoreError) as refused:
        export(run_p, "sharegpt", out)
    assert str(refused.value) == (f"--out {out} holds the export of {run_s.resolve()}, not of {run_p.resolve()}; "
                                  "pass a new --out, or --overwrite to replace it")
    assert json.loads((out / "mmcof_qwen.json").read_text())  # untouched

    export(run_p, "sharegpt", out, overwrite=True)
    fresh = tmp_path / "fresh"
    export(run_p, "sharegpt", fresh)
    assert files(out) == sorted([*files(fresh), "notes.txt"])  # nothing of runS's export is left
    assert (out / "mmcof.json").read_bytes() == (fresh / "mmcof.json").read_bytes()
    assert json.loads((out / "export_report.json").read_text())["input"] == str(run_p)  # the card is of runP


def test_filter_and_view_refuse_an_output_of_another_run_unless_overwrite(tmp_path, two_runs):
    run_p, run_s = two_runs
    filter_run(run_s, tmp_path / "filtered", FilterConfig())
    with pytest.raises(StoreError, match=r"holds the filter output of .*runS, not of .*runP; pass a new --out, or "
                                         r"--overwrite to replace it$"):
        filter_run(run_p, tmp_path / "filtered", FilterConfig())
    filter_run(run_p, tmp_path / "filtered", FilterConfig(), overwrite=True)
    assert json.loads((tmp_path / "filtered" / "filter_report.json").read_text())["input"].endswith("runP")

    page = tmp_path / "views" / "report.html"
    write_report(run_s, page)
    with pytest.raises(StoreError, match=r"holds the report of .*runS, not of .*runP"):
        write_report(run_p, page)
    write_report(run_p, page, overwrite=True)
    alone = tmp_path / "alone" / "report.html"
    write_report(run_p, alone)
    assert files(page.parent) == [name.replace("alone", "views") for name in files(alone.parent)]


def test_overwrite_of_an_unfinished_output_that_recorded_nothing_is_refused(tmp_path, two_runs):
    run_p, run_s = two_runs
    out = tmp_path / "exp"
    export(run_s, "sharegpt", out)
    (out / ".mmcof-export").write_text(json.dumps({"source": str(run_s.resolve())}))  # killed before its record
    with pytest.raises(StoreError, match="holds an unfinished export of .*runS that recorded no files"):
        export(run_p, "sharegpt", out, overwrite=True)
