"""Token budget of a sample for Qwen2.5-VL (or, with `factor` 32, Qwen3-VL), so that a trainer's `cutoff_len`
never truncates image tokens and a vLLM server accepts as many images as a sample holds (its default is one per prompt).

An image costs `(h/28) * (w/28)` tokens after `smart_resize(max_pixels)` (one token per 2x2 merge of
14-pixel patches), plus `<|vision_start|>` and `<|vision_end|>`. Text is counted exactly with a tokenizer
(`AutoTokenizer.from_pretrained`), else estimated. Qwen3-VL's processor counts the same way with 16-pixel patches
(32 pixels per token side) and the same chat markup; each export target (targets.py) gives its factor.
"""

from __future__ import annotations

import math

from mmcof_gen.cof_format import IMAGE
from mmcof_gen.extras import require
from mmcof_gen.imaging import smart_resize

PATCH = 28  # pixels per image token side: patch 14 x spatial merge 2
MIN_PIXELS = 112 * 112  # the CoF recipe's image_min_pixels
VISION_MARKUP = "<|vision_start|><|image_pad|><|vision_end|>"
ESTIMATE_BYTES_PER_TOKEN = 3  # Qwen's BPE averages about 4 bytes per token on this text; 3 errs long
CUTOFF_STEP = 128


def image_tokens(width: int, height: int, max_pixels: int, min_pixels: int = MIN_PIXELS, factor: int = PATCH) -> int:
    """Tokens of one image: its processor's grid at `factor` pixels per token side (28 Qwen2.5-VL, 32 Qwen3-VL)."""
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return (h // factor) * (w // factor)


def chat_text(messages: list[dict]) -> str:
    """The messages as Qwen2-VL's chat template renders them (LLaMA-Factory's `qwen2_vl`), one image pad each."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content'].replace(IMAGE, VISION_MARKUP)}<|im_end|>\n"
                   for m in messages)


class TokenBudget:
    """Counts tokens per sample at `max_pixels`; `summary()` gives cutoff_len and the vLLM image limit."""

    def __init__(self, max_pixels: int, tokenizer_path: str | None = None, min_pixels: int = MIN_PIXELS,
                 factor: int = PATCH):
        self.max_pixels, self.min_pixels, self.factor = max_pixels, min_pixels, factor
        self.tokenizer = None
        if tokenizer_path:
            require("hf", "--tokenizer", ("transformers",))
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        self.method = (f"exact (tokenizer {tokenizer_path})" if self.tokenizer else
                       f"estimate (text: UTF-8 bytes / {ESTIMATE_BYTES_PER_TOKEN}); pass --tokenizer for exact counts")
        self.longest: tuple[int, str] = (0, "")
        self.total = self.samples = self.max_images = 0

    def text_tokens(self, text: str) -> int:
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text.encode("utf-8")) / ESTIMATE_BYTES_PER_TOKEN)

    def count(self, messages: list[dict], sizes: list[tuple[int, int]]) -> int:
        """Tokens of one sample whose images have `sizes` (width, height), in placeholder order."""
        text = chat_text(messages)
        pads = sum(image_tokens(w, h, self.max_pixels, self.min_pixels, self.factor) for w, h in sizes)
        if self.tokenizer is not None:
            return self.text_tokens(text) + pads - len(sizes)  # each <|image_pad|> expands to its grid
        return self.text_tokens(text.replace(VISION_MARKUP, "")) + 2 * len(sizes) + pads  # + start/end markers

    def add(self, sample_id: str, messages: list[dict], sizes: list[tuple[int, int]]) -> int:
        tokens = self.count(messages, sizes)
        self.samples += 1
        self.total += tokens
        self.max_images = max(self.max_images, len(sizes))
        self.longest = max(self.longest, (tokens, sample_id))
        return tokens

    def summary(self) -> dict:
        longest = self.longest[0]
        return {
            "max_pixels": self.max_pixels, "min_pixels": self.min_pixels, "text_tokens": self.method,
            "max_tokens": longest, "longest_sample": self.longest[1],
            "mean_tokens": round(self.total / self.samples, 1) if self.samples else 0,
            "cutoff_len": math.ceil(longest / CUTOFF_STEP) * CUTOFF_STEP,
            "max_images": self.max_images,
            "limit_mm_per_prompt": f'{{"image": {max(1, self.max_images)}}}',
        }
