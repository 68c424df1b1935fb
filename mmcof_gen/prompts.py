"""Prompt templates live as files in `prompts/`; each record carries the content hash of those it used."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmcof_gen.errors import ConfigError


class Prompts:
    """All `*.txt` templates of one folder, rendered with `str.format` fields."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.texts = {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(self.folder.glob("*.txt"))}
        if not self.texts:
            raise ConfigError(f"prompts folder {self.folder} holds no *.txt templates")

    @property
    def hashes(self) -> dict[str, str]:
        return {name: hashlib.sha256(text.encode()).hexdigest()[:16] for name, text in self.texts.items()}

    @staticmethod
    def combined_hash(hashes: dict[str, str]) -> str:
        """One hash over all templates, so that editing any prompt starts a new run."""
        joined = "\n".join(f"{name}={digest}" for name, digest in sorted(hashes.items()))
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    def render(self, name: str, **fields) -> str:
        if name not in self.texts:
            raise ConfigError(f"prompt template {self.folder / (name + '.txt')} is missing")
        return self.texts[name].format(**fields)
