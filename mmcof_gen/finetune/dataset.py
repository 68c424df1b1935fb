"""Training samples from a sharegpt dataset: multi-turn, multi-image conversations rendered with the
model's own chat template, with labels on the assistant turns only.

Any LLaMA-Factory sharegpt dataset folder is read through its `dataset_info.json` (the columns and
role tags it declares), so `mmcof-gen export --format sharegpt` output and other people's datasets
load the same way. Image paths are relative to that folder.

What is trained: for each assistant message, exactly what the chat template appends after the
generation prompt. With Qwen2-VL's template that is the message text, `<|im_end|>` and the newline
after it: the same tokens LLaMA-Factory's `qwen2_vl` template trains (`{{content}}<|im_end|>\\n`), so
our trainer and LLaMA-Factory learn the same targets. System, user and tool-result turns, the
`<|im_start|>assistant\\n` header, image tokens and padding are -100.

Each rendered piece (one message, or an assistant's header and body) is tokenized on its own, as
LLaMA-Factory does; the pieces meet at special tokens, so this equals tokenizing the whole text
(the tests check it against the processor). Each `<|image_pad|>` is expanded to the image's token
count, computed by the model's own image processor from the image's header; pixels are decoded only
when a sample is drawn.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mmcof_gen import cof_format
from mmcof_gen.errors import ConfigError
from mmcof_gen.validate import Sample, read_records

IGNORE = -100
EXAMPLES = 5
# LLaMA-Factory's defaults for a sharegpt entry that does not name its columns or tags.
_DEFAULT_COLUMNS = {"messages": "conversations", "images": "images", "system": None}
_DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# Tool results are user turns in the CoF format; a function call is what the assistant said.
_ROLE_OF_TAG = {"user_tag": "user", "assistant_tag": "assistant", "system_tag": "system",
                "observation_tag": "user", "function_tag": "assistant"}


class SampleDropped(ValueError):
    """A sample that cannot be trained on: `kind` is counted in the report, the message says why."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def read_dataset(data_dir: Path) -> list[Sample]:
    """Every sample of every sharegpt entry in `data_dir/dataset_info.json`, roles normalised to
    system/user/assistant."""
    data_dir = Path(data_dir)
    info_path = data_dir / "dataset_info.json"
    if not info_path.is_file():
        raise ConfigError(f"--data {data_dir}: no dataset_info.json; pass a folder written by "
                          "`mmcof-gen export --format sharegpt` (or any LLaMA-Factory sharegpt dataset folder)")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{info_path} is not valid JSON: {exc}") from None
    entries = {name: e for name, e in info.items() if isinstance(e, dict) and e.get("formatting") == "sharegpt"}
    if not entries:
        raise ConfigError(f"{info_path} declares no `formatting: sharegpt` dataset")
    samples = []
    for name, entry in entries.items():
        data_file = data_dir / entry.get("file_name", "")
        if not data_file.is_file():
            raise ConfigError(f"{info_path}: dataset {name!r} names {data_file}, which does not exist")
        columns = {**_DEFAULT_COLUMNS, **entry.get("columns", {})}
        tags = {**_DEFAULT_TAGS, **entry.get("tags", {})}
        roles = {tags[tag]: role for tag, role in _ROLE_OF_TAG.items()}
        for index, raw in enumerate(read_records(data_file)):
            messages = [{"role": roles.get(turn.get(tags["role_tag"]), str(turn.get(tags["role_tag"]))),
                         "content": turn.get(tags["content_tag"]) or ""} for turn in raw.get(columns["messages"]) or []]
            if columns["system"] and raw.get(columns["system"]):
                messages.insert(0, {"role": "system", "content": raw[columns["system"]]})
            images = raw.get(columns["images"]) or []
            samples.append(Sample(str(raw.get("id") or f"{name}#{index}"), messages,
                                  images if isinstance(images, list) else [images], data_dir))
    return samples


@dataclass
class Encoded:
    """One conversation as token ids and labels; `image_tokens[k]` is how many pads image k became."""

    sample: Sample
    input_ids: list[int]
    labels: list[int]
    image_tokens: list[int]
    truncated: bool = False


class ConversationEncoder:
    """Renders conversations with `processor`'s chat template and masks all but the assistant turns."""

    def __init__(self, processor, max_length: int):
        self.processor, self.max_length = processor, max_length
        self.tokenizer = processor.tokenizer
        self.image_pad = processor.image_token_id
        self.merge = processor.image_processor.merge_size

    def render_pieces(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """The rendered text cut into (piece, trained) in order; trained pieces are assistant bodies."""
        conversation = [{"role": m["role"], "content": _content_parts(m["content"])} for m in messages]
        pieces, done = [], ""
        for i, message in enumerate(conversation):
            if message["role"] == "assistant":
                header = self._render(conversation[:i], generation_prompt=True)
                pieces.append((self._after(done, header), False))
                done = header
            text = self._render(conversation[: i + 1])
            pieces.append((self._after(done, text), message["role"] == "assistant"))
            done = text
        return [piece for piece in pieces if piece[0]]

    def encode(self, sample: Sample) -> Encoded:
        """Token ids and labels of `sample`; raises SampleDropped with the reason when it cannot be used."""
        placeholders = sum(m["content"].count(cof_format.IMAGE) for m in sample.messages)
        if placeholders != len(sample.images):
            raise SampleDropped("placeholders", f"{placeholders} <image> placeholders for {len(sample.images)} images")
        if not any(m["role"] == "assistant" for m in sample.messages):
            raise SampleDropped("no_assistant_turn", "no assistant turn")
        try:
            counts = [self.image_token_count(*image_header_size(sample, k)) for k in range(len(sample.images))]
        except (OSError, ValueError) as exc:
            raise SampleDropped("image_unreadable", f"cannot open an image: {exc}") from None
        ids, labels, remaining = [], [], iter(counts)
        for piece, trained in self.render_pieces(sample.messages):
            for token in self.tokenizer(piece, add_special_tokens=False)["input_ids"]:
                if token == self.image_pad:
                    pads = next(remaining)
                    ids += [token] * pads
                    labels += [IGNORE] * pads
                else:
                    ids.append(token)
                    labels.append(token if trained else IGNORE)
        encoded = Encoded(sample, ids, labels, counts)
        if len(ids) > self.max_length:
            last_image_token = max((i for i, token in enumerate(ids) if token == self.image_pad), default=-1)
            if last_image_token >= self.max_length:
                raise SampleDropped("images_beyond_max_length", f"{len(ids)} tokens and its images do not fit in max_length {self.max_length}")
            encoded = Encoded(sample, ids[: self.max_length], labels[: self.max_length], counts, truncated=True)
        if all(label == IGNORE for label in encoded.labels):
            raise SampleDropped("no_label_within_max_length", f"no assistant token within max_length {self.max_length}")
        return encoded

    def image_token_count(self, width: int, height: int) -> int:
        """Tokens of one image at the processor's min/max pixels (its grid over the 2x2 merge)."""
        return self.processor.image_processor.get_number_of_image_patches(height, width) // self.merge ** 2

    def _render(self, conversation: list[dict], generation_prompt: bool = False) -> str:
        if not conversation:
            return ""
        return self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)

    @staticmethod
    def _after(prefix: str, text: str) -> str:
        if not text.startswith(prefix):
            raise ConfigError("the model's chat template renders a conversation differently from its prefixes; "
                              "its assistant turns cannot be located (use a Qwen2-VL-style template)")
        return text[len(prefix):]


def _content_parts(content: str) -> list[dict]:
    """`<image>` placeholders become image entries at their positions, in order."""
    parts = []
    for number, text in enumerate(content.split(cof_format.IMAGE)):
        if number:
            parts.append({"type": "image"})
        if text:
            parts.append({"type": "text", "text": text})
    return parts


def image_header_size(sample: Sample, index: int) -> tuple[int, int]:
    """(W, H) of image `index` from its header alone, as `Sample.load` will decode it."""
    source = sample.images[index]
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif not Path(source).is_absolute():
        source = sample.base / source
    with Image.open(source) as image:
        return image.size


class ConversationDataset(torch.utils.data.Dataset):
    """Encodes every sample up front (text and image headers only), so that drops and truncations are
    known and reported before training; pixels are processed in `__getitem__`."""

    def __init__(self, samples: list[Sample], processor, max_length: int):
        self.encoder = ConversationEncoder(processor, max_length)
        self.image_processor = processor.image_processor
        self.items: list[Encoded] = []
        reasons: Counter = Counter()
        examples = []
        for sample in samples:
            try:
                self.items.append(self.encoder.encode(sample))
            except SampleDropped as exc:
                reasons[exc.kind] += 1
                if len(examples) < EXAMPLES:
                    examples.append({"id": sample.id, "reason": str(exc)})
        self.report = {"samples": len(samples), "kept": len(self.items),
                       "truncated": sum(item.truncated for item in self.items),
                       "dropped": sum(reasons.values()), "drop_reasons": dict(reasons), "dropped_examples": examples,
                       "max_length": max_length, "max_tokens": max((len(i.input_ids) for i in self.items), default=0)}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        features = {"input_ids": torch.tensor(item.input_ids), "labels": torch.tensor(item.labels)}
        if item.image_tokens:
            pixels = self.image_processor(images=[item.sample.load(k) for k in range(len(item.image_tokens))],
                                          return_tensors="pt")
            grid = pixels["image_grid_thw"]
            if (grid.prod(-1) // self.encoder.merge ** 2).tolist() != item.image_tokens:
                raise ValueError(f"sample {item.sample.id}: its images changed on disk since the dataset was read")
            features |= {"pixel_values": pixels["pixel_values"], "image_grid_thw": grid}
        return features


@dataclass
class Collator:
    """Right-pads a batch (labels with -100, attention mask 0) and concatenates the images' patches."""

    pad_id: int
    image_pad: int
    with_token_types: bool

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": torch.full((len(features), longest), self.pad_id),
            "labels": torch.full((len(features), longest), IGNORE),
            "attention_mask": torch.zeros((len(features), longest), dtype=torch.long),
        }
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][row, :n] = f["input_ids"]
            batch["labels"][row, :n] = f["labels"]
            batch["attention_mask"][row, :n] = 1
        with_images = [f for f in features if "pixel_values" in f]
        if with_images:
            batch["pixel_values"] = torch.cat([f["pixel_values"] for f in with_images])
            batch["image_grid_thw"] = torch.cat([f["image_grid_thw"] for f in with_images])
        if self.with_token_types:  # Qwen2.5-VL in transformers 5 places its 3-D rotary positions by these
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_pad).int() * batch["attention_mask"]
        return batch


def collator_for(processor) -> Collator:
    return Collator(processor.tokenizer.pad_token_id, processor.image_token_id,
                    "mm_token_type_ids" in processor.model_input_names)
