"""Where the files the package reads at run time live: prompt templates (`prompts/`), the ready pipelines
(`pipelines/`), the demo's photos (`photos/`) and each export format's "How to train" text for the dataset
card (`cards/`). They ship inside the wheel; in a checkout the top-level `prompts` and `pipelines` are links
to these folders, so there is one copy of each file.

Installed packages are folders on disk, so the resources are handed out as `Path`s.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

ROOT = Path(str(files(__name__)))
PROMPTS = ROOT / "prompts"
PIPELINES = ROOT / "pipelines"
PHOTOS = ROOT / "photos"
CARDS = ROOT / "cards"


def prompts(kind: str) -> Path:
    """The shipped prompt folder of one kind: cof, eval, tasks, agent (vlm agent), template (ocr agent)."""
    return PROMPTS / kind


def pipelines() -> dict[str, Path]:
    """The shipped pipeline YAMLs by name (file stem); `finetune` is the fine-tune recipe."""
    return {path.stem: path for path in sorted(PIPELINES.glob("*.yaml"))}


def description(path: Path) -> str:
    """A pipeline's one-line description: the first line of its leading comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""
