"""What every task maker is to the worker: the `TaskMaker` protocol (its registry, TASK_MAKERS in the package's
`__init__`, is the one place that reads `tasks.kind`), and the image at truth size the synthesising makers read.

A worker (worker.py) reads an image's content hash and size once, asks the image's maker for its tasks, then
searches them; it never needs to know where the tasks came from. A maker is built once per worker, on first use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from mmcof_gen import resources
from mmcof_gen.imaging import load_image
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import ErrorRecord, ImageTasks

if TYPE_CHECKING:
    from mmcof_gen.agent.base import SearchAgent
    from mmcof_gen.config import ImagesConfig, PipelineConfig
    from mmcof_gen.models.ocr import OcrEngine
    from mmcof_gen.tasks.sources import ImageUnit

OnLoop = Callable[[Coroutine], Future]
"""runs a coroutine on the worker's event loop (the one its agent's model clients live on)"""


class TaskMaker(Protocol):
    """The tasks of one image: synthesised (OCR text questions, the VLM task writer) or given by the work
    source (a questions file, COCO annotations, a V* folder). `make` may block its caller: a worker calls it
    from the thread that processes the image, never on the event loop."""

    @classmethod
    def build(cls, config: PipelineConfig, prompts: Prompts, engine: Callable[[], OcrEngine], agent: SearchAgent,
              on_loop: OnLoop) -> TaskMaker:
        """The maker with what it needs of the worker: `engine` its OCR engine, built on first call; `agent` the
        agent that will search the tasks; `on_loop` its event loop."""
        ...

    def make(self, unit: ImageUnit, sha256: str, size: tuple[int, int]) -> tuple[ImageTasks, list[ErrorRecord]]:
        """The image's tasks and the problems met (a given box that is refused); `sha256` and `size` (W, H
        upright) are the image's as the worker read them. ImageError or OSError: the image cannot be used;
        TasksFailed: making its tasks failed."""
        ...

    def close(self) -> None:
        """Release the maker's own model clients (on the worker's event loop)."""
        ...


class TasksFailed(Exception):
    """Making an image's tasks failed (its cause, a model out of reach, is the exception's `__cause__`): the image
    gets an error record, which a resume tries again when the cause is transient, and the run goes on."""


def image_tasks(rel: str, sha256: str, size: tuple[int, int], **made) -> ImageTasks:
    """The record of an image's task list; `made`: its tasks, and the rejected candidates and model calls."""
    width, height = size
    return ImageTasks(id=rel, image=rel, image_sha256=sha256, width=width, height=height, **made)


def truth_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size ground truth is read at: the original, or smaller when it holds more than max_pixels."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def truth_image(unit: ImageUnit, size: tuple[int, int], images: ImagesConfig) -> Image.Image:
    """The image at `truth_size`, which synthesised ground truth is read from."""
    target = truth_size(*size, images.truth_max_pixels)
    image = load_image(unit.path, images.max_pixels, target_size=target)
    return image if image.size == target else image.resize(target, Image.LANCZOS)


def task_prompts(config: PipelineConfig) -> Prompts:
    """The prompts of task synthesis (text questions, the VLM task writer's), hashed into every run's identity."""
    return Prompts(config.tasks.synthesis.prompts_dir or resources.prompts("tasks"))
