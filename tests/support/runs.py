"""Small run folders built directly from records, for tests of filter, export and validate: real image
files and real frames (with their true `frame_sha256`), without running the agent.

    img = write_noise_image(root / "images" / "a.png", (600, 400), seed=1)
    t = make_trajectory(root / "images", "a.png", 448, boxes=[(10, 10, 120, 90)])
    write_run(root / "run", root / "images", [t])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mmcof_gen import __version__
from mmcof_gen.config import PipelineConfig
from mmcof_gen import replay
from mmcof_gen.imaging import file_sha256, image_sha256, make_frame, make_frames
from mmcof_gen.schema import ChainStep, Provenance, Task, Trajectory, Verdict, View, task_id, trajectory_id
from mmcof_gen.store import MANIFEST, write_json_atomic

MAX_PIXELS = PipelineConfig().images.max_pixels


def write_noise_image(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A PNG of seeded noise: every crop of it is distinct, so a wrong crop never matches by chance."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_trajectory(images_root: Path, image: str, resolution: int, boxes: list = (), question: str = "What does the sign say?",
                    answer: str = "EXIT", gt_boxes: list = (), question_type: str = "text", status: str = "accepted",
                    correct: bool = True, thoughts: list[str] | None = None) -> Trajectory:
    path = Path(images_root) / image
    frame = make_frame(path, resolution, MAX_PIXELS)
    with Image.open(path) as original:
        width, height = original.size
    sha = file_sha256(path)
    task = Task(id=task_id(sha, question), image=image, image_sha256=sha, question=question, answer=answer,
                gt_boxes=list(gt_boxes), source="test", question_type=question_type)
    view = View(resolution=resolution, width=frame.width, height=frame.height, original_width=width,
                original_height=height, frame_sha256=image_sha256(frame))
    thoughts = thoughts or [f"Zoom {n} looks closer." for n in range(1, len(boxes) + 1)]
    return Trajectory(
        id=trajectory_id(task.id, resolution), task=task, view=view,
        chain=[ChainStep(thought=t, box=tuple(b)) for t, b in zip(thoughts, boxes)],
        final_thought="The sign reads EXIT.", answer=answer,
        verdict=Verdict(correct=correct, predicted=answer, expected=answer,
                        reason="matches the ground truth" if correct else "read 'X', expected 'EXIT'"),
        needs_zoom=bool(boxes), provenance=Provenance(package_version=__version__, config_hash="test"),
        status=status, reason=None if status == "accepted" else "not found: no text in the region",
    )


def write_run(run_dir: Path, images_root: Path, trajectories: list[Trajectory]) -> Path:
    """A run folder as synthesize writes it: manifest (config snapshot, inputs) and trajectories.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"tool": "mmcof-gen", "config": PipelineConfig().model_dump(mode="json"),
                "inputs": {"images": str(Path(images_root).resolve()), "questions": None},
                "versions": {"mmcof-gen": __version__}, "fingerprint": "test-fingerprint"}
    write_json_atomic(run_dir / MANIFEST, manifest)
    with (run_dir / "trajectories.jsonl").open("w", encoding="utf-8") as handle:
        for trajectory in trajectories:
            handle.write(trajectory.model_dump_json() + "\n")
    return run_dir


def count_frame_rebuilds(monkeypatch) -> list[tuple[str, list[int]]]:
    """The (source image name, resolutions) of every frame rebuild that replay does in this process, as it goes."""
    rebuilt = []

    def counted(path, resolutions, max_pixels):
        rebuilt.append((path.name, sorted(resolutions)))
        return make_frames(path, resolutions, max_pixels)
    monkeypatch.setattr(replay, "make_frames", counted)
    return rebuilt
