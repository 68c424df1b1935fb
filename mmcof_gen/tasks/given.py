"""The tasks of an image whose questions its work source gives: a questions file (tasks/sources.py), COCO
annotations (tasks/coco.py) or a V* folder (tasks/vstar.py). The driver reads the questions, never the image; the
worker reads the image's hash and size, which the tasks' ids and boxes need."""

from __future__ import annotations

from mmcof_gen.imaging import validate_box
from mmcof_gen.schema import ErrorRecord, ImageTasks, Task, task_id
from mmcof_gen.tasks.base import image_tasks
from mmcof_gen.tasks.sources import ImageUnit


class GivenTasks:
    """A `TaskMaker`: the questions the image's source gives, as its finished tasks."""

    @classmethod
    def build(cls, config, prompts, engine, agent, on_loop) -> GivenTasks:
        return cls()

    def make(self, unit: ImageUnit, sha256: str, size: tuple[int, int]) -> tuple[ImageTasks, list[ErrorRecord]]:
        """The given questions as finished Tasks, and an error record per refused box."""
        tasks: dict[str, Task] = {}
        problems = []
        for given in unit.questions or []:
            tid = task_id(sha256, given.question)
            try:
                boxes = [validate_box(box, *size) for box in given.boxes]
            except ValueError as exc:
                problems.append(ErrorRecord(id="q-" + tid, stage="tasks", image=unit.rel, task_id=tid,
                                            reason=f"bbox of question {given.question[:80]!r}: {exc}"))
                continue
            tasks[tid] = Task(id=tid, image=unit.rel, image_sha256=sha256, question=given.question,
                              options=given.options, answer=given.answer, gt_boxes=boxes, source=unit.source,
                              question_type=given.question_type, position=given.position)
        return image_tasks(unit.rel, sha256, size, tasks=list(tasks.values())), problems

    def close(self) -> None:
        pass
