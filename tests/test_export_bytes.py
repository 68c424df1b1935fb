"""Exported bytes stay the same across refactors (issue 24): every file of every export format of one fixed run
is hashed and compared with the hashes recorded in `export_bytes.json` before the post-processing code was
reshaped. Exports record their input and output paths (and verl their absolute image paths, inside compressed
Parquet pages), so the run and the exports are made in one FIXED folder, `ROOT`, not under pytest's tmp_path;
a lock keeps two test sessions on one machine from sharing it at once.

The hashes hold for the pinned Pillow, zlib and pyarrow of the lock file (the run records mmcof-gen version
0.0.0); after a deliberate change of the exported bytes, record them again with
`MMCOF_RECORD_EXPORT_BYTES=1 pytest tests/test_export_bytes.py`.
"""

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

from mmcof_gen.export import FORMATS, export, rl
from tests.support import runs
from tests.support.runs import make_trajectory, write_noise_image, write_run

ROOT = Path("/tmp/mmcof-gen-export-bytes")
RECORDED = Path(__file__).with_name("export_bytes.json")
EXPORTS = [(fmt, "qwen2.5-vl") for fmt in FORMATS] + [(fmt, "qwen3-vl") for fmt in ("sharegpt", "parquet")]
NEEDS_PYARROW = {"parquet", "verl"}


def demo_run(root: Path) -> Path:
    """Zoom chains at two R, a direct answer, a multiple-choice one, rejected searches, a synthesized task."""
    images = root / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    write_noise_image(images / "b.png", (500, 500), seed=2)
    write_noise_image(images / "c.png", (1400, 900), seed=3)
    colour = make_trajectory(images, "b.png", 448, question="What colour is the cup?", answer="blue")
    ocr = make_trajectory(images, "b.png", 448, question="What does the label say?", answer="A4",
                          status="rejected", correct=False)
    trajectories = [
        make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150), (50, 40, 120, 90)]),
        make_trajectory(images, "a.png", 672),
        make_trajectory(images, "b.png", 448, question="What is on the door?", answer="PUSH", status="rejected",
                        correct=False),
        ocr.model_copy(update={"task": ocr.task.model_copy(update={"source": "ocr-synthesis"})}),
        colour.model_copy(update={"task": colour.task.model_copy(update={"options": ["red", "blue", "green"]})}),
        make_trajectory(images, "c.png", 448, boxes=[(100, 60, 260, 200)], gt_boxes=[(300, 200, 600, 450)]),
        make_trajectory(images, "c.png", 1024, boxes=[(200, 120, 500, 400), (250, 150, 400, 300)]),
    ]
    return write_run(root / "run", images, trajectories)


def hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture
def fixed_root(monkeypatch):
    monkeypatch.setattr(runs, "__version__", "0.0.0")  # the version the run records is in every report and card
    ROOT.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT.parent / f"{ROOT.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        shutil.rmtree(ROOT, ignore_errors=True)
        yield ROOT
        shutil.rmtree(ROOT, ignore_errors=True)


def test_every_exported_file_has_the_bytes_recorded_before_the_refactor(fixed_root):
    run_dir = demo_run(fixed_root)
    made = {}
    for fmt, target in EXPORTS:
        if fmt in NEEDS_PYARROW and importlib.util.find_spec("pyarrow") is None:
            continue
        out = fixed_root / "exports" / f"{fmt}-{target}"
        options = rl.RLOptions(test_fraction=0.5) if fmt in rl.FORMATS else None
        export(run_dir, fmt, out, rl_options=options, target=target)
        made[f"{fmt} {target}"] = hashes(out)
    if os.environ.get("MMCOF_RECORD_EXPORT_BYTES"):
        RECORDED.write_text(json.dumps(made, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    recorded = json.loads(RECORDED.read_text(encoding="utf-8"))
    assert {"sharegpt qwen2.5-vl", "swift-grpo qwen2.5-vl"} <= made.keys()
    assert made == {name: files for name, files in recorded.items() if name in made}
