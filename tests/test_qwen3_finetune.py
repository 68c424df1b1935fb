"""finetune on a Qwen3-VL export with a tiny Qwen3-VL built offline (patch 16, its own chat template): labels on
exactly the assistant turns, a few optimiser steps through `mmcof-gen finetune`, and the LLaMA-Factory config
for a Qwen3-VL model."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from mmcof_gen.export import export
from mmcof_gen.targets import QWEN3_SYSTEM_PROMPT
from mmcof_gen.finetune.dataset import IGNORE, ConversationEncoder, read_dataset
from mmcof_gen.finetune.llamafactory import emit_llamafactory
from mmcof_gen.finetune.settings import load_finetune_config
from tests.support.runs import make_trajectory, write_noise_image, write_run
from tests.support.tiny_models import build_tiny_qwen3vl

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TWO_ZOOMS = [(10, 10, 120, 90), (30, 30, 80, 60)]
TINY_PIXELS = {"image_max_pixels": 128 * 128, "image_min_pixels": 32 * 32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3vl(tmp_path_factory.mktemp("tiny") / "qwen3")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """`mmcof-gen export --target qwen3-vl` of one 2-zoom sample and one direct sample."""
    root = tmp_path_factory.mktemp("export")
    write_noise_image(root / "images" / "a.png", (600, 400), seed=1)
    run = write_run(root / "run", root / "images", [
        make_trajectory(root / "images", "a.png", 224, boxes=TWO_ZOOMS),
        make_trajectory(root / "images", "a.png", 224, question="Direct?")])
    export(run, "sharegpt", root / "export", target="qwen3-vl")
    return root / "export"


def test_a_qwen3_sample_trains_exactly_its_assistant_turns(tiny, exported):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny, size={"shortest_edge": 32 * 32, "longest_edge": 128 * 128})
    sample = read_dataset(exported)[0]
    encoded = ConversationEncoder(processor, max_length=8192).encode(sample)
    tokenizer = processor.tokenizer
    assistant = [m["content"] for m in sample.messages if m["role"] == "assistant"]
    assert len(assistant) == 3 and '"img_idx": 0' in assistant[0]
    spans, current, masked = [], [], []
    for token, label in zip(encoded.input_ids, encoded.labels):
        if label == IGNORE:
            if current:
                spans.append(tokenizer.decode(current))
                current = []
            masked.append(token)
        else:
            assert label == token
            current.append(token)
    spans += [tokenizer.decode(current)] if current else []
    assert spans == [text + "<|im_end|>\n" for text in assistant]
    assert tokenizer.decode(encoded.input_ids).startswith("<|im_start|>system\n" + QWEN3_SYSTEM_PROMPT)
    pads = [i for i, token in enumerate(encoded.input_ids) if token == processor.image_token_id]
    assert len(pads) == sum(encoded.image_tokens) and all(encoded.labels[i] == IGNORE for i in pads)
    text = "".join(piece for piece, _ in ConversationEncoder(processor, 8192).render_pieces(sample.messages))
    whole = processor(text=[text], images=[sample.load(k) for k in range(3)], return_tensors="pt")
    assert whole["input_ids"][0].tolist() == encoded.input_ids


def test_finetune_trains_a_tiny_qwen3vl_on_its_export(tiny, exported, tmp_path):
    from mmcof_gen.finetune.train import finetune

    config = load_finetune_config(None, data=exported, model=str(tiny), out=tmp_path / "out", max_steps=2,
                                  batch_size=2, grad_accum=1, lr=1e-3, save_steps=2, **TINY_PIXELS)
    report = finetune(config)
    assert report["global_step"] == 2 and report["dataset"]["kept"] == 2
    assert math.isfinite(report["first_loss"]) and math.isfinite(report["last_loss"])
    assert json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"


def test_emit_llamafactory_for_a_qwen3vl_model_names_its_template_and_pixel_bounds(tiny, exported, tmp_path):
    qwen3 = yaml.safe_load(emit_llamafactory(load_finetune_config(None, data=exported, model=str(tiny)),
                                             tmp_path / "lf").read_text())
    assert (qwen3["template"], qwen3["image_min_pixels"], qwen3["image_max_pixels"]) == ("qwen3_vl", 65536,
                                                                                         3840 * 3840)
    hub = yaml.safe_load(emit_llamafactory(load_finetune_config(None, data=exported,
                                                                model="Qwen/Qwen3-VL-8B-Instruct"),
                                           tmp_path / "hub").read_text())
    assert hub["template"] == "qwen3_vl"
    old = yaml.safe_load(emit_llamafactory(load_finetune_config(None, data=exported), tmp_path / "old").read_text())
    assert (old["template"], old["image_min_pixels"]) == ("qwen2_vl", 112 * 112)
