"""`mmcof-gen finetune --emit-llamafactory DIR`: the same fine-tune as a LLaMA-Factory config, for users who
train there (`llamafactory-cli train DIR/mmcof_sft.yaml`).

Writes `DIR/mmcof_sft.yaml` (keys as in LLaMA-Factory's `examples/train_lora/qwen2_5vl_lora_sft.yaml` and
the CoF release's `configs/sft_lora-7b.yaml`) and `DIR/dataset_info.json` whose entries are the dataset's
own, pointing at its data files by absolute path. `media_dir` is the dataset folder, against which
LLaMA-Factory resolves the relative image paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mmcof_gen.errors import ConfigError
from mmcof_gen.targets import student_target
from mmcof_gen.finetune.settings import FinetuneConfig
from mmcof_gen.store import write_bytes_atomic, write_json_atomic

CONFIG_FILE = "mmcof_sft.yaml"


def llamafactory_config(config: FinetuneConfig, dataset_names: list[str], emit_dir: Path) -> dict:
    """The LLaMA-Factory training arguments equal to `config`; the template and the smallest image are those of
    the model's family (targets.py: qwen2_vl for Qwen2.5-VL, qwen3_vl and 65536 pixels for Qwen3-VL)."""
    lora = config.method == "lora"
    student = student_target(config.model)
    return {
        "model_name_or_path": config.model,
        "image_max_pixels": config.image_max_pixels,
        "image_min_pixels": max(config.image_min_pixels, student.min_pixels),
        "trust_remote_code": True,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": config.method,
        **({"lora_rank": config.lora_rank, "lora_alpha": config.lora_alpha or 2 * config.lora_rank,
            "lora_dropout": config.lora_dropout, "lora_target": "all"} if lora else {}),
        "freeze_vision_tower": not config.train_vision,
        "freeze_multi_modal_projector": not config.train_vision,  # ours: the merger belongs to the vision tower
        "dataset": ",".join(dataset_names),
        "dataset_dir": str(emit_dir.resolve()),
        "media_dir": str(Path(config.data).resolve()),
        "template": student.llamafactory_template,
        "cutoff_len": config.max_length,
        "output_dir": str(Path(config.out).resolve()),
        "logging_steps": 1,
        "save_steps": config.save_steps,
        **({"save_total_limit": config.save_total_limit} if config.save_total_limit else {}),
        "plot_loss": True,
        "per_device_train_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.lr,
        "num_train_epochs": config.epochs,
        **({"max_steps": config.max_steps} if config.max_steps else {}),
        "lr_scheduler_type": "cosine",
        "warmup_ratio": config.warmup_ratio,
        "bf16": True,
        "seed": config.seed,
        "report_to": "none",
    }


def emit_llamafactory(config: FinetuneConfig, emit_dir: Path) -> Path:
    """Write the YAML and dataset_info.json into `emit_dir`; returns the YAML's path."""
    if config.data is None:
        raise ConfigError("--emit-llamafactory needs --data EXPORT_DIR (the dataset the config trains on)")
    data_dir, emit_dir = Path(config.data), Path(emit_dir)
    info_path = data_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"--data {data_dir}: cannot read dataset_info.json ({exc}); pass a folder written by "
                          "`mmcof-gen export --format sharegpt`") from None
    entries = {name: {**entry, "file_name": str((data_dir / entry["file_name"]).resolve())}
               for name, entry in info.items() if isinstance(entry, dict) and "file_name" in entry}
    if not entries:
        raise ConfigError(f"{info_path} names no dataset file")
    emit_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(emit_dir / "dataset_info.json", entries)
    path = emit_dir / CONFIG_FILE
    header = (f"# LLaMA-Factory SFT config written by `mmcof-gen finetune --emit-llamafactory`: the same fine-tune as\n"
              f"# `mmcof-gen finetune` with these settings. Run: llamafactory-cli train {path}\n"
              "# Multi-GPU: add `deepspeed: <LLaMA-Factory>/examples/deepspeed/ds_z3_config.json` (as the CoF release does).\n")
    body = yaml.safe_dump(llamafactory_config(config, list(entries), emit_dir), sort_keys=False)
    write_bytes_atomic(path, (header + body).encode("utf-8"))
    return path
