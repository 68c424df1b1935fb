"""mmcof-gen finetune on CPU with a tiny Qwen2.5-VL built offline: label masks token by token on an exported
2-zoom sample, image-safe truncation, over-fitting with LoRA and full training, save -> load -> generate,
resume with the same step count, the offline hub-id failure, the LLaMA-Factory config and the shipped
multi-GPU configs."""

import json
import shutil
import sys

import pytest
import torch
import yaml
from PIL import Image

from mmcof_gen import resources
from mmcof_gen import cof_format
from mmcof_gen.cli import main
from mmcof_gen.errors import ConfigError
from mmcof_gen.export import export
from mmcof_gen.finetune.dataset import IGNORE, ConversationDataset, ConversationEncoder, collator_for, read_dataset
from mmcof_gen.finetune.llamafactory import emit_llamafactory
from mmcof_gen.finetune.settings import load_finetune_config
from mmcof_gen.finetune.train import finetune
from tests.support.runs import make_trajectory, write_noise_image, write_run
from tests.support.tiny_models import build_tiny_qwen25vl

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TWO_ZOOMS = [(10, 10, 120, 90), (30, 30, 80, 60)]
ANSWERS = ["EXIT", "STOP", "OPEN", "PUSH"]
TINY_PIXELS = {"image_max_pixels": 112 * 112, "image_min_pixels": 56 * 56}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny Qwen2.5-VL with embeddings at the logit scale of a trained model (std 0.3, not 0.02): with
    the frozen tied head of a random init, no adapter could move the logits enough to learn anything."""
    from transformers import AutoModelForImageTextToText

    path = build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny") / "qwen")
    model = AutoModelForImageTextToText.from_pretrained(path)
    torch.manual_seed(0)
    model.get_input_embeddings().weight.data.normal_(0, 0.3)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A real export (`mmcof-gen export --format sharegpt`) of one 2-zoom sample."""
    root = tmp_path_factory.mktemp("export")
    write_noise_image(root / "images" / "a.png", (600, 400), seed=1)
    run = write_run(root / "run", root / "images", [make_trajectory(root / "images", "a.png", 224, boxes=TWO_ZOOMS)])
    export(run, "sharegpt", root / "export")
    return root / "export"


@pytest.fixture(scope="module")
def short_data(tmp_path_factory):
    """Four short one-zoom conversations in LLaMA-Factory's default layout (conversations / from / value,
    human / gpt, a system column): someone else's dataset, and small enough to over-fit in seconds."""
    root = tmp_path_factory.mktemp("short")
    records = []
    for i, word in enumerate(ANSWERS):
        write_noise_image(root / "images" / f"{i}.png", (112, 112), seed=i)
        write_noise_image(root / "images" / f"{i}-crop.png", (56, 56), seed=10 + i)
        records.append({"system": "You zoom.", "images": [f"images/{i}.png", f"images/{i}-crop.png"], "conversations": [
            {"from": "human", "value": "<image> Question: What does the sign say?"},
            {"from": "gpt", "value": cof_format.zoom_turn("The sign is small.", (10, 20, 30, 40))},
            {"from": "human", "value": cof_format.IMAGE},
            {"from": "gpt", "value": cof_format.answer_turn(f"It reads {word}.", word)}]})
    (root / "signs.json").write_text(json.dumps(records), encoding="utf-8")
    (root / "dataset_info.json").write_text(json.dumps({"signs": {
        "file_name": "signs.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images", "system": "system"}}}), encoding="utf-8")
    return root


def processor_for(model_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(model_path, size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})


def config(tiny, data, out, **overrides):
    return load_finetune_config(None, data=data, model=str(tiny), out=out, **{
        "max_steps": 30, "batch_size": 4, "grad_accum": 1, "lr": 1e-2, "save_steps": 15, **TINY_PIXELS, **overrides})


def labelled_spans(input_ids, labels):
    """Runs of consecutive trained positions, as token id lists (every label equals its input id)."""
    spans, current = [], []
    for token, label in zip(input_ids, labels):
        if label == IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    return spans + ([current] if current else [])


def losses(out):
    return [json.loads(line) for line in (out / "loss.jsonl").read_text(encoding="utf-8").splitlines()]


# -- the dataset ---------------------------------------------------------------------------------------------
def test_exported_two_zoom_sample_trains_only_assistant_text_end_of_turn_and_newline(tiny, exported):
    processor = processor_for(tiny)
    [sample] = read_dataset(exported)
    encoded = ConversationEncoder(processor, max_length=4096).encode(sample)
    tokenizer = processor.tokenizer

    assistant = [m["content"] for m in sample.messages if m["role"] == "assistant"]
    assert len(assistant) == 3 and len(sample.images) == 3  # two zoom turns and the answer; frame and two crops
    spans = [tokenizer.decode(span) for span in labelled_spans(encoded.input_ids, encoded.labels)]
    assert spans == [text + "<|im_end|>\n" for text in assistant]

    # everything else is masked: the text between trained spans ends with the assistant header
    masked_runs, current = [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label == IGNORE:
            current.append(token)
        elif current:
            masked_runs.append(tokenizer.decode(current))
            current = []
    assert len(masked_runs) == 3 and all(run.endswith("<|im_end|>\n<|im_start|>assistant\n") for run in masked_runs)
    assert masked_runs[0].startswith("<|im_start|>system\n" + cof_format.SYSTEM_PROMPT)
    assert masked_runs[1].startswith("<|im_start|>user\n<|vision_start|><|image_pad|>")  # the tool result
    pads = [i for i, token in enumerate(encoded.input_ids) if token == processor.image_token_id]
    assert len(pads) == sum(encoded.image_tokens) and all(encoded.labels[i] == IGNORE for i in pads)

    # the piecewise tokenization equals the processor's own on the whole rendered conversation
    text = "".join(piece for piece, _ in ConversationEncoder(processor, 4096).render_pieces(sample.messages))
    images = [sample.load(k) for k in range(3)]
    whole = processor(text=[text], images=images, return_tensors="pt")
    assert whole["input_ids"][0].tolist() == encoded.input_ids
    batch = collator_for(processor)([ConversationDataset([sample], processor, 4096)[0]])
    assert torch.equal(batch["image_grid_thw"], whole["image_grid_thw"])
    assert torch.equal(batch["pixel_values"], whole["pixel_values"])
    assert torch.equal(batch["mm_token_type_ids"], whole["mm_token_type_ids"])


def test_a_sample_renders_through_the_collator_as_eval_sends_its_first_request(tiny, exported):
    """Export, training and eval agree token for token up to the first reply: what finetune's collator feeds
    the model before the first trained token is what eval's request renders to with the same processor."""
    from mmcof_gen.eval_protocols import first_messages
    from mmcof_gen.models.chat import chat_conversation

    processor = processor_for(tiny)
    [sample] = read_dataset(exported)
    batch = collator_for(processor)([ConversationDataset([sample], processor, 4096)[0]])
    first_trained = int((batch["labels"][0] != IGNORE).nonzero()[0])
    trained_prefix = batch["input_ids"][0, :first_trained].tolist()

    [trajectory] = [json.loads(line) for line in (exported.parent / "run" / "trajectories.jsonl").read_text().splitlines()]
    frame = sample.load(0)
    messages = first_messages(frame, trajectory["task"]["question"], trajectory["task"]["options"], "cof")
    text = processor.apply_chat_template(chat_conversation(messages), tokenize=False, add_generation_prompt=True)
    sent = processor(text=[text], images=[frame], return_tensors="pt")["input_ids"][0].tolist()
    assert processor.tokenizer.decode(trained_prefix) == processor.tokenizer.decode(sent)
    assert trained_prefix == sent
    assert "<|vision_end|>Question: What does the sign say?" in text


def test_truncation_cuts_only_text_and_drops_samples_whose_images_do_not_fit(tiny, exported):
    processor = processor_for(tiny)
    [sample] = read_dataset(exported)
    full = ConversationEncoder(processor, 4096).encode(sample)
    last_pad = max(i for i, token in enumerate(full.input_ids) if token == processor.image_token_id)

    cut = ConversationDataset([sample], processor, max_length=len(full.input_ids) - 3)
    assert cut.report | {"max_tokens": None} == {
        "samples": 1, "kept": 1, "truncated": 1, "dropped": 0, "drop_reasons": {}, "dropped_examples": [],
        "max_length": len(full.input_ids) - 3, "max_tokens": None}
    assert cut.items[0].input_ids == full.input_ids[:-3] and cut.items[0].labels == full.labels[:-3]

    inside_image = ConversationDataset([sample], processor, max_length=last_pad)
    assert len(inside_image) == 0
    assert inside_image.report["drop_reasons"] == {"images_beyond_max_length": 1}
    assert inside_image.report["dropped_examples"][0]["id"] == sample.id


def test_other_layouts_read_through_dataset_info_and_a_batch_pads_with_ignored_labels(tiny, short_data):
    processor = processor_for(tiny)
    samples = read_dataset(short_data)
    assert [m["role"] for m in samples[0].messages] == ["system", "user", "assistant", "user", "assistant"]
    assert samples[0].messages[0]["content"] == "You zoom."
    dataset = ConversationDataset(samples, processor, 4096)
    spans = labelled_spans(dataset.items[3].input_ids, dataset.items[3].labels)
    assert processor.tokenizer.decode(spans[-1]) == cof_format.answer_turn("It reads PUSH.", "PUSH") + "<|im_end|>\n"

    short = ConversationDataset(samples[:1], processor, 4096)[0]
    short = {**short, "input_ids": short["input_ids"][:-5], "labels": short["labels"][:-5]}
    batch = collator_for(processor)([dataset[1], short])
    length = len(dataset.items[1].input_ids)
    assert batch["input_ids"].shape == (2, length)
    assert batch["labels"][1, -5:].tolist() == [IGNORE] * 5
    assert batch["attention_mask"].sum(1).tolist() == [length, length - 5]
    assert batch["input_ids"][1, -5:].tolist() == [processor.tokenizer.pad_token_id] * 5


def test_a_folder_without_dataset_info_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="no dataset_info.json; pass a folder written by `mmcof-gen export"):
        read_dataset(tmp_path)


# -- training ------------------------------------------------------------------------------------------------
def test_lora_overfits_four_samples_and_the_saved_adapter_loads_merges_and_generates(tiny, short_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = tmp_path / "lora"
    report = finetune(config(tiny, short_data, out, merge=True))
    log = losses(out)
    assert [entry["step"] for entry in log] == list(range(1, 31)) and report["global_step"] == 30
    assert log[-1]["loss"] <= log[0]["loss"] / 2, [entry["loss"] for entry in log]
    assert (out / "loss.png").stat().st_size > 0 and (out / "checkpoint-15").is_dir()
    assert report["dataset"]["kept"] == 4

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 32 and adapter["target_modules"]
    assert not any("visual" in name or "lm_head" in name for name in adapter["target_modules"])
    assert {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    processor = AutoProcessor.from_pretrained(out / "adapter")
    tuned = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny), out / "adapter").eval()
    merged = AutoModelForImageTextToText.from_pretrained(out / "merged").eval()
    base = AutoModelForImageTextToText.from_pretrained(tiny).eval()
    conversation = [{"role": "user", "content": [{"type": "image", "image": Image.open(short_data / "images" / "0.png")},
                                                 {"type": "text", "text": " Question: What does the sign say?"}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    with torch.no_grad():
        tuned_logits, merged_logits = tuned(**inputs).logits, merged(**inputs).logits
        assert torch.allclose(tuned_logits, merged_logits, atol=1e-4)
        assert not torch.allclose(tuned_logits, base(**inputs).logits, atol=1e-2)
        generated = tuned.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 8 or generated[0, -1] == processor.tokenizer.eos_token_id


def test_full_finetune_overfits_and_leaves_the_vision_tower_untouched(tiny, short_data, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "full"
    report = finetune(config(tiny, short_data, out, method="full"))
    log = losses(out)
    assert log[-1]["loss"] <= log[0]["loss"] / 2, [entry["loss"] for entry in log]
    # warmup_ratio 0.1 of 30 steps: a linear warm-up over 3 steps (a rate per step, as used), then the cosine decay
    assert [round(entry["learning_rate"] / 1e-2, 4) for entry in log[:5]] == [0.0, 0.3333, 0.6667, 1.0, 0.9966]
    before, after = load_file(tiny / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    vision = [name for name in before if "visual" in name]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"],
                           after["model.layers.0.mlp.up_proj.weight"])
    assert report["trainable_parameters"] == sum(t.numel() for n, t in before.items() if "visual" not in n)


def test_resume_continues_from_the_last_checkpoint_with_the_same_step_count(tiny, short_data, tmp_path):
    settings = {"max_steps": 6, "save_steps": 3, "batch_size": 2}
    uninterrupted = tmp_path / "uninterrupted"
    finetune(config(tiny, short_data, uninterrupted, **settings))

    out = tmp_path / "interrupted"  # the same run, stopped after checkpoint-3 was written
    shutil.copytree(uninterrupted, out)
    shutil.rmtree(out / "checkpoint-6")
    shutil.rmtree(out / "adapter")
    (out / "loss.jsonl").write_text("".join(json.dumps(e) + "\n" for e in losses(uninterrupted)[:4]) + '{"step": 5, "lo')
    with pytest.raises(ConfigError, match="pass --resume to continue it"):
        finetune(config(tiny, short_data, out, **settings))

    report = finetune(config(tiny, short_data, out, resume=True, **settings))
    assert report["resumed_from"].endswith("checkpoint-3") and report["global_step"] == 6
    resumed, reference = losses(out), losses(uninterrupted)
    assert [e["step"] for e in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[:3] == reference[:3]
    assert [e["loss"] for e in resumed[3:]] == pytest.approx([e["loss"] for e in reference[3:]], rel=1e-4)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "checkpoint-6").is_dir()


def test_resume_without_a_checkpoint_is_refused(tiny, short_data, tmp_path):
    with pytest.raises(ConfigError, match="holds no checkpoint-N folder"):
        finetune(config(tiny, short_data, tmp_path / "new", resume=True))


# -- the command line ----------------------------------------------------------------------------------------
def test_offline_hub_id_fails_at_once_with_one_line_saying_how_to_get_the_model(exported, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(sys, "argv", ["mmcof-gen", "finetune", "--data", str(exported), "--model",
                                      "Qwen/Qwen2.5-VL-7B-Instruct", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "huggingface-cli download Qwen/Qwen2.5-VL-7B-Instruct" in error
    assert error.startswith("mmcof-gen: --model Qwen/Qwen2.5-VL-7B-Instruct is not in the local Hugging Face cache")
    assert not (tmp_path / "out").exists()


def test_emit_llamafactory_writes_the_same_hyper_parameters(exported, tmp_path):
    settings = load_finetune_config(None, data=exported, out=tmp_path / "saves")
    path = emit_llamafactory(settings, tmp_path / "lf")
    assert yaml.safe_load(path.read_text()) == {
        "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct", "image_max_pixels": 3840 * 3840,
        "image_min_pixels": 112 * 112, "trust_remote_code": True, "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "lora_rank": 32, "lora_alpha": 64, "lora_dropout": 0.0, "lora_target": "all",
        "freeze_vision_tower": True, "freeze_multi_modal_projector": True, "dataset": "mmcof",
        "dataset_dir": str((tmp_path / "lf").resolve()), "media_dir": str(exported.resolve()),
        "template": "qwen2_vl", "cutoff_len": 81920, "output_dir": str((tmp_path / "saves").resolve()),
        "logging_steps": 1, "save_steps": 100, "plot_loss": True, "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 2, "learning_rate": 1e-5, "num_train_epochs": 3.0,
        "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "bf16": True, "seed": 42, "report_to": "none"}
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info == {"mmcof": {**json.loads((exported / "dataset_info.json").read_text())["mmcof"],
                              "file_name": str((exported / "mmcof.json").resolve())}}


def test_shipped_multi_gpu_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = resources.PIPELINES / "finetune"
    zero3 = load_config_from_file(str(folder / "accelerate_zero3.yaml"))
    fsdp = load_config_from_file(str(folder / "accelerate_fsdp.yaml"))
    assert (zero3.distributed_type, fsdp.distributed_type) == ("DEEPSPEED", "FSDP")
    assert zero3.num_processes == fsdp.num_processes == 8
    deepspeed = json.loads((resources.ROOT / zero3.deepspeed_config["deepspeed_config_file"]).read_text())
    assert deepspeed["zero_optimization"]["stage"] == 3
