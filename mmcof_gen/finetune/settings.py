"""Settings of `mmcof-gen finetune`: the shipped `pipelines/finetune.yaml` holds the released CoF recipe,
flags override it. Kept apart from the trainer so that `--emit-llamafactory` needs no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmcof_gen import resources
from mmcof_gen.config import pipeline_file, read_yaml
from mmcof_gen.errors import ConfigError
from mmcof_gen.schema import invalid_fields

DEFAULT_FINETUNE_CONFIG = resources.PIPELINES / "finetune.yaml"


class FinetuneConfig(BaseModel):
    """Every setting of a fine-tune; `pipelines/finetune.yaml` holds the CoF recipe, flags override it."""

    model_config = ConfigDict(extra="forbid")

    data: Path | None = Field(None, description="dataset folder with dataset_info.json (mmcof-gen export --format sharegpt)")
    model: str = Field("Qwen/Qwen2.5-VL-7B-Instruct", description="hub id (downloaded beforehand) or local folder")
    out: Path = Path("outputs/finetune")
    method: Literal["lora", "full"] = "lora"
    lora_rank: int = Field(32, ge=1)
    lora_alpha: int | None = Field(None, ge=1, description="None: 2 x rank (LLaMA-Factory's default)")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    train_vision: bool = Field(False, description="also train the vision tower (LoRA on its linear layers, or unfrozen)")
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps (overrides epochs)")
    lr: float = Field(1e-5, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    batch_size: int = Field(2, ge=1, description="per device")
    grad_accum: int = Field(2, ge=1)
    max_length: int = Field(81920, ge=16, description="tokens per sample (LLaMA-Factory's cutoff_len)")
    image_max_pixels: int = Field(3840 * 3840, ge=28 * 28)
    image_min_pixels: int = Field(112 * 112, ge=28 * 28)
    gradient_checkpointing: bool | None = Field(None, description="None: on with a GPU, off on CPU")
    save_steps: int = Field(100, ge=1)
    save_total_limit: int | None = Field(None, ge=1)
    seed: int = 42
    merge: bool = Field(False, description="also write the base model with the adapter merged in (LoRA)")
    resume: bool = Field(False, description="continue from the last checkpoint in `out`")


def load_finetune_config(path: Path | None = None, **overrides) -> FinetuneConfig:
    """The YAML config (a file or a shipped name; default: the shipped finetune.yaml) with the non-None
    `overrides` applied."""
    path = pipeline_file(path, DEFAULT_FINETUNE_CONFIG)
    try:
        data = read_yaml(path)
        data |= {key: value for key, value in overrides.items() if value is not None}
        return FinetuneConfig.model_validate(data)
    except ValidationError as exc:
        problems = invalid_fields(exc)
        raise ConfigError(f"{path} (or a flag): {problems}") from None
