"""The package's layers, from the bottom up, as data: a module may import modules of its own layer and of
the layers below, never one above. tests/test_layers.py reads every import (inside functions and under
`if TYPE_CHECKING:` too) and fails on one that goes up; docs/architecture.md shows `markdown()`'s table.

A module is named relative to the package (`models.chat`); `pkg.*` stands for every module under `pkg`,
and "" for the package's own `__init__`. Every module is in exactly one layer: the lowest that names it
(the model configs are under `models.*` too, a layer below the clients).
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("", "errors", "schema", "imaging", "resources", "extras", "parallel", "positions",
                    "conventions", "answers", "layers")),
    ("formats", ("prompts", "cof_format", "budget", "store")),
    ("model configs", ("models.chat.config", "models.ocr_config")),
    ("models", ("models", "models.*")),
    ("configuration", ("config", "agent", "executors", "tasks")),
    ("agents and tasks", ("agent.*", "tasks.*")),
    ("synthesis", ("worker", "executors.*", "progress", "synthesize", "stats")),
    ("after a run", ("replay", "filtering", "targets", "export", "export.*", "validate", "report", "finetune",
                     "finetune.*", "scoring", "rewards", "cof_release", "benchmarks", "benchmarks.*",
                     "eval_protocols", "evaluate")),
    ("entry points", ("cli", "scenes")),
)

# Import cycles that only `if TYPE_CHECKING:` closes, each with why it is still there. None now: the chooser's
# loop (agent/candidates.py, annotated with agent/vlm_search.py's types) is named in search.py's ACTION_SPACES as
# "module:function", not imported.
TYPING_CYCLES: frozenset[frozenset[str]] = frozenset()


def layer_of(module: str) -> int:
    """The index in LAYERS of a module named relative to the package; KeyError when no layer holds it."""
    for index, (_, members) in enumerate(LAYERS):
        for member in members:
            if module == member or (member.endswith(".*") and module.startswith(member[:-1])):
                return index
    raise KeyError(f"{module or '__init__'} is in no layer of mmcof_gen/layers.py; add it to one")


def markdown() -> str:
    """The layer table docs/architecture.md shows (tests/test_layers.py checks that it does)."""
    rows = [f"| {index} | {name} | {', '.join(f'`{m}`' if m else '`__init__`' for m in members)} |"
            for index, (name, members) in enumerate(LAYERS)]
    return "\n".join(["| layer | name | modules |", "| --- | --- | --- |", *rows])


if __name__ == "__main__":
    print(markdown())
