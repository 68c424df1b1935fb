"""Where tasks come from. TASK_MAKERS is the one registry of how a bare image's tasks are made
(`tasks.kind`), read by config validation, `synthesize` and the worker."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskMaker:
    """How a bare image's tasks are made."""

    model_roles: bool
    """it writes with the model roles (models.task_writer, else the planner): it needs agent.kind vlm, a chat
    model as reader, and a task writer that sees; the worker runs it on its event loop"""


TASK_MAKERS: dict[str, TaskMaker] = {
    "ocr": TaskMaker(model_roles=False),  # text questions from OCR at full resolution (tasks/text_questions.py)
    "vlm": TaskMaker(model_roles=True),  # proposed, described and checked by the model roles (tasks/synthesis.py)
}
