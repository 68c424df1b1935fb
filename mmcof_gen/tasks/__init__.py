"""Where tasks come from. TASK_MAKERS is the one registry of how a bare image's tasks are made (`tasks.kind`),
read by config validation, `synthesize` and the worker; GIVEN makes the tasks of an image whose questions its
work source gives. An entry names its class (a `TaskMaker`, tasks/base.py) as "module:Class", imported when a
run needs it: the makers import `config`, which reads this registry."""

from __future__ import annotations

from dataclasses import dataclass

from mmcof_gen.schema import named_object


@dataclass(frozen=True)
class TaskMakerKind:
    """One way of making an image's tasks: its class, and what config validation asks of it."""

    cls: str
    """"module:Class"; the class has `build(config, prompts, engine, agent, on_loop)`"""
    model_roles: bool
    """it writes with the model roles (models.task_writer, else the planner): it needs agent.kind vlm, a chat
    model as reader, and a task writer that sees"""

    def load(self) -> type:
        return named_object(self.cls)


TASK_MAKERS: dict[str, TaskMakerKind] = {
    # text questions from OCR at full resolution
    "ocr": TaskMakerKind("mmcof_gen.tasks.text_questions:OcrTextQuestions", model_roles=False),
    # proposed, described and checked by the model roles
    "vlm": TaskMakerKind("mmcof_gen.tasks.vlm_writer:VlmTaskWriter", model_roles=True),
}

GIVEN = TaskMakerKind("mmcof_gen.tasks.given:GivenTasks", model_roles=False)
"""the questions of a questions file, COCO annotations or a V* folder (their sources give every image its questions)"""
