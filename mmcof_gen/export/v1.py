"""The older single-turn CoF form (docs/format.md, "The older single-turn form"): one assistant turn in which
each zoom is `<|box_start|>[x1, y1, x2, y2]<|box_end|><|image_zoomin|><image>` inline in the `<think>` text.

`<|image_zoomin|>` is not a Qwen2.5-VL token: a trainer must add it (`tokenizer.add_special_tokens(
{"additional_special_tokens": ["<|image_zoomin|>"]})`, then `model.resize_token_embeddings(len(tokenizer))`;
in LLaMA-Factory `new_special_tokens: <|image_zoomin|>` and `resize_vocab: true`). The crops' `<image>`
placeholders sit inside the assistant turn, so their image tokens are part of the answer the model learns
to produce; mask them from the loss if your trainer does not.
"""

from __future__ import annotations

from mmcof_gen import cof_format, resources
from mmcof_gen.export import sharegpt
from mmcof_gen.export.base import ExportFormat
from mmcof_gen.schema import Trajectory

V1_SYSTEM_PROMPT = "You are a helpful assistant."
V1_INSTRUCTION = (resources.prompts("cof") / "v1_instruction.txt").read_text(encoding="utf-8").strip()


def zoom_text(thought: str, box) -> str:
    return f"{thought} <|box_start|>[{', '.join(str(int(v)) for v in box)}]<|box_end|>{cof_format.ZOOMIN}{cof_format.IMAGE}"


def messages(trajectory: Trajectory, system_prompt: str | None) -> list[dict]:
    task = trajectory.task
    thoughts = [zoom_text(step.thought, step.box) for step in trajectory.chain] + [trajectory.final_thought]
    answer = f"<think> {' '.join(thoughts)} </think>\n<answer> {cof_format.answer_for(trajectory)} </answer>"
    return [{"role": "system", "content": system_prompt or V1_SYSTEM_PROMPT},
            {"role": "user", "content": f"{cof_format.IMAGE} {cof_format.question_text(task.question, task.options)}\n"
                                        f"{V1_INSTRUCTION}"},
            {"role": "assistant", "content": answer}]


FORMAT = ExportFormat(
    name="v1", data_file="mmcof_v1.json", messages=messages, record=sharegpt.record, llamafactory_name="mmcof_v1",
)
