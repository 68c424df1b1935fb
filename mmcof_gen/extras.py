"""The optional extras (`pip install 'mmcof-gen[hf]'` and so on): what each one brings, and the one-line
error a command gives when the extra it needs is not installed (exit 2, like every user error)."""

from __future__ import annotations

import importlib.util

# The modules each extra installs (pyproject.toml), as they are imported.
MODULES = {
    "hf": ("torch", "torchvision", "transformers", "accelerate", "peft", "huggingface_hub"),
    "data": ("datasets", "pyarrow", "matplotlib", "imagehash"),
    "ray": ("ray",),
    "yolo": ("ultralytics",),
}


class MissingExtra(ValueError):
    """A command or setting whose optional extra is not installed (stdlib only: every module may raise it)."""


def missing(extra: str, feature: str) -> MissingExtra:
    return MissingExtra(f"{feature} needs the [{extra}] extra: pip install 'mmcof-gen[{extra}]'")


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise `MissingExtra` unless the modules of `extra` (or just `modules` of it) can be imported."""
    if any(importlib.util.find_spec(name) is None for name in modules or MODULES[extra]):
        raise missing(extra, feature)


def extra_of(module: str | None) -> str | None:
    """The extra that installs a top-level module, for an import that failed anyway."""
    top = (module or "").split(".")[0]
    return next((extra for extra, names in MODULES.items() if top in names), None)
