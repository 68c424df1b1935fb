"""`mmcof-gen finetune`: train Qwen2.5-VL (or any chat-templated image-text model) on exported chains.

The recipe, top to bottom: check the output folder and the model source, read the dataset (drops and
truncations counted), load processor and model, put LoRA on every linear layer of the language model
(or unfreeze it all for `full`), keep the vision tower frozen unless asked, and hand it to transformers'
`Trainer`: cosine schedule with 10% warm-up, bf16 on a GPU and fp32 on CPU, gradient checkpointing on
a GPU, a checkpoint every `save_steps`. Then save the adapter (or model) with the processor, optionally
a merged model, and write the loss log, its plot and `finetune_report.json`.

Defaults are the released CoF recipe (`configs/sft_lora-7b.yaml` of the CoF repo; docs/format.md).
`Trainer` is what makes the same code run on one CPU, one GPU or `accelerate launch` over 8 GPUs with
DeepSpeed ZeRO-3 or FSDP (configs in `pipelines/finetune/`).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from transformers import TrainerCallback

from mmcof_gen.errors import ConfigError
from mmcof_gen.finetune.settings import FinetuneConfig
from mmcof_gen.store import jsonl_lines, write_bytes_atomic, write_json_atomic

LOSS_LOG = "loss.jsonl"


def model_source(model: str) -> str:
    """`model` if it can be loaded without surprises: a local folder, a hub id in the local cache, or a hub
    id with the hub reachable. Offline and not cached fails now, in one line, instead of inside transformers."""
    from huggingface_hub import constants, try_to_load_from_cache

    if Path(model).is_dir():
        return model
    if Path(model).exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ConfigError(f"--model {model}: no such model folder; pass a folder holding config.json or a hub id")
    if isinstance(try_to_load_from_cache(model, "config.json"), str):
        return model
    fix = f"download it beforehand with `huggingface-cli download {model}` or pass a local folder"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(f"--model {model} is not in the local Hugging Face cache and the hub is offline "
                          f"(HF_HUB_OFFLINE=1): {fix}")
    host = urlparse(constants.ENDPOINT).hostname
    try:  # without this, huggingface_hub retries an unreachable hub for minutes
        socket.create_connection((host, 443), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"--model {model} is not in the local Hugging Face cache and {host} is unreachable "
                          f"({exc.strerror or exc}): {fix}") from None
    return model


def finetune(config: FinetuneConfig) -> dict:
    """Train as `config` says; returns the report also written to `out/finetune_report.json`."""
    import torch
    from transformers import Trainer

    from mmcof_gen.finetune.dataset import collator_for, read_dataset

    if config.data is None:
        raise ConfigError("finetune: pass --data EXPORT_DIR (a folder written by `mmcof-gen export --format sharegpt`)")
    samples = read_dataset(config.data)  # a wrong --data is said before a model loads
    out = Path(config.out)
    checkpoint = _checkpoint(out, config.resume)
    source = model_source(config.model)
    gpu = torch.cuda.is_available()
    args = _training_arguments(config, out, gpu)  # before the model: under ZeRO-3 they set up partitioned loading
    processor, dataset, model = _load(config, samples, source, gpu)
    model.config.use_cache = False
    model, trainable = _trainable(model, config)

    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator_for(processor),
                      callbacks=[LossLog(out / LOSS_LOG)])
    result = trainer.train(resume_from_checkpoint=checkpoint if config.resume else None)

    final = out / ("adapter" if config.method == "lora" else "model")
    trainer.save_model(str(final))
    report = {}
    if trainer.is_world_process_zero():
        processor.save_pretrained(final)
        if config.merge and config.method == "lora":
            merge_adapter(source, final, out / "merged")
        losses = [json.loads(line)["loss"] for _, line in jsonl_lines(out / LOSS_LOG)]
        report = {
            "model": config.model, "data": str(config.data), "method": config.method, "output": str(final),
            "merged": str(out / "merged") if config.merge and config.method == "lora" else None,
            "resumed_from": checkpoint if config.resume else None, "global_step": trainer.state.global_step,
            "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None, "trainable_parameters": trainable,
            "dataset": dataset.report, "config": config.model_dump(mode="json"), "device": "cuda" if gpu else "cpu",
            "loss_plot": plot_loss(out / LOSS_LOG, out / "loss.png"),
        }
        write_json_atomic(out / "finetune_report.json", report)
    return report


def _checkpoint(out: Path, resume: bool) -> str | None:
    """The checkpoint `--resume` continues from; an output folder that is a file, or holds an earlier run's
    checkpoints without `--resume`, is refused."""
    from transformers.trainer_utils import get_last_checkpoint

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; pass a new folder for the fine-tune")
    checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
    if resume and checkpoint is None:
        raise ConfigError(f"--resume: {out} holds no checkpoint-N folder to continue from; drop --resume to start")
    if checkpoint and not resume:
        raise ConfigError(f"--out {out} holds checkpoints of an earlier run; pass --resume to continue it or a new --out")
    return checkpoint


def _training_arguments(config: FinetuneConfig, out: Path, gpu: bool):
    """transformers' arguments for `config`. warmup_steps below 1 is a ratio of the total steps in transformers 5
    (which dropped warmup_ratio); the config keeps warmup_ratio < 1, so it always is one (the tests check the
    rates of the first steps)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr, num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1, lr_scheduler_type="cosine", warmup_steps=config.warmup_ratio,
        bf16=gpu, gradient_checkpointing=gpu if config.gradient_checkpointing is None else config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=1, save_strategy="steps",
        save_steps=config.save_steps, save_total_limit=config.save_total_limit, seed=config.seed,
        remove_unused_columns=False, report_to="none", use_cpu=not gpu)


def _load(config: FinetuneConfig, samples: list, source: str, gpu: bool):
    """(processor, dataset, model): the processor at the config's image bounds, the samples it can train on (none
    is refused before the model loads), the model. LoRA keeps the frozen base in bf16 on a GPU; full training
    keeps fp32 master weights under bf16 autocast."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmcof_gen.finetune.dataset import ConversationDataset

    try:
        processor = AutoProcessor.from_pretrained(
            source, size={"shortest_edge": config.image_min_pixels, "longest_edge": config.image_max_pixels})
        dataset = ConversationDataset(samples, processor, config.max_length)
        if len(dataset) == 0:
            raise ConfigError(f"--data {config.data}: no usable sample ({dataset.report['drop_reasons']}); "
                              "see the reasons, or raise --max-length")
        dtype = torch.bfloat16 if gpu and config.method == "lora" else torch.float32
        return processor, dataset, AutoModelForImageTextToText.from_pretrained(source, dtype=dtype)
    except OSError as exc:
        raise ConfigError(f"--model {config.model}: cannot load it ({str(exc).splitlines()[0]}); download it with "
                          f"`huggingface-cli download {config.model}` or pass a local folder") from None


def _trainable(model, config: FinetuneConfig):
    """LoRA on the language model's linear layers (and the vision tower's with `train_vision`), or the whole
    model unfrozen for `full` with the vision tower frozen unless `train_vision`. Returns (model, count)."""
    import torch

    language = model.get_decoder()
    in_language = {id(m) for m in language.modules()}
    lm_head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    outside = {id(p) for p in [*language.parameters(), *lm_head.parameters(), *embeddings.parameters()]}
    vision = [p for p in model.parameters() if id(p) not in outside]  # the vision tower and its merger
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
                   and module is not lm_head and (id(module) in in_language or config.train_vision)]
        model = get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha or 2 * config.lora_rank,
                                                 lora_dropout=config.lora_dropout, target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    else:
        for parameter in vision:
            parameter.requires_grad_(config.train_vision)
    return model, sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if p.requires_grad)  # ZeRO-3 partitions


def merge_adapter(base: str, adapter: Path, out: Path) -> Path:
    """The base model with the LoRA adapter folded into its weights, saved with the processor (reloaded on
    CPU in one process, so it works the same after a single-GPU or a ZeRO-3 run)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    PeftModel.from_pretrained(model, adapter).merge_and_unload().save_pretrained(out)
    AutoProcessor.from_pretrained(adapter).save_pretrained(out)
    return out


class LossLog(TrainerCallback):
    """Appends `{"step", "epoch", "loss", "learning_rate", "grad_norm"}` per logged step to a JSONL file.

    On resume the lines past the checkpoint's step are dropped first, so the file never holds a step twice."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip().endswith("}") and json.loads(line)["step"] <= state.global_step]
            write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            entry = {"step": state.global_step, "epoch": state.epoch, "loss": logs["loss"],
                     "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm")}
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


def plot_loss(log: Path, png: Path) -> str | None:
    """Training loss per step as a PNG (matplotlib, headless); None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [json.loads(line) for _, line in jsonl_lines(Path(log))]
    if not entries:
        return None
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot([e["step"] for e in entries], [e["loss"] for e in entries], linewidth=1)
    axis.set(xlabel="step", ylabel="training loss", title=f"{len(entries)} steps, last loss {entries[-1]['loss']:.4g}")
    figure.tight_layout()
    figure.savefig(png, dpi=100)
    plt.close(figure)
    return str(png)
