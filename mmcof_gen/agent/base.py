"""What every search agent is to the rest of the package: the `SearchAgent` protocol and its `SearchResult`
(its registry, AGENTS in the package's `__init__`, is the one place that reads `agent.kind`).

A worker (worker.py) makes the frames and runs `run` on its event loop for every (task, resolution); it
never needs to know which agent it holds. The agent's class answers, before any model is built, what the
driver needs to know: the models it records in provenance, the servers it checks, the detector the Ray
executor shares between actors, and whether its searches compute here (CPU-bound) or wait on servers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

from PIL import Image

from mmcof_gen.schema import ChainStep, Step, Task, Verdict, View

if TYPE_CHECKING:
    from mmcof_gen.config import PipelineConfig
    from mmcof_gen.models.detector import Detector, DetectorConfig
    from mmcof_gen.models.ocr import OcrEngine
    from mmcof_gen.prompts import Prompts
    from mmcof_gen.tasks.sources import GivenQuestion


@dataclass
class SearchResult:
    """What one search at one resolution produced; the caller wraps it into a Trajectory."""

    steps: list[Step] = field(default_factory=list)
    chain: list[ChainStep] = field(default_factory=list)
    final_thought: str = ""
    answer: str | None = None
    verdict: Verdict | None = None
    needs_zoom: bool = False
    accepted: bool = False
    reason: str | None = None


class SearchAgent(Protocol):
    """One search per (task, view). `cpu_bound` True: the search computes in this process (OCR), so a worker
    runs one search at a time, in order, and holds one image at a time; False: it waits on model servers,
    so a worker keeps every search of many images in flight on its event loop."""

    cpu_bound: ClassVar[bool]

    @classmethod
    def build(cls, config: PipelineConfig, prompts: Prompts, engine: Callable[[], OcrEngine],
              shared_detector: Detector | None = None) -> SearchAgent:
        """The agent with its models (`build_agent`). `engine`: the worker's OCR engine, built on first call;
        `shared_detector` stands in for a model of `models.detector` built here."""
        ...

    @staticmethod
    def models(config: PipelineConfig) -> dict[str, str]:
        """Role -> model, as every record's provenance names them."""
        ...

    @staticmethod
    def check_servers(config: PipelineConfig, wait_seconds: float = 0.0) -> dict[str, dict]:
        """Ask the model servers the agent will call, before any record is written (waiting up to `wait_seconds`
        for one that does not answer yet); base URL -> what each said."""
        ...

    @staticmethod
    def detector(config: PipelineConfig) -> DetectorConfig | None:
        """The detector model the agent locates with, if any (the Ray executor serves it from shared actors)."""
        ...

    @staticmethod
    def cannot_search(question: GivenQuestion) -> str | None:
        """Why the agent could not search a given question (None: it can); asked of every `--questions` line
        before the run, so such a file is refused in one line instead of failing once per (task, R)."""
        ...

    async def run(self, task: Task, frame: Image.Image, view: View) -> SearchResult:
        ...

    async def aclose(self) -> None:
        """Release the agent's model clients, on the event loop that called them."""
        ...


class StopSearch(Exception):
    """The search ends without a verified chain (budget spent, reply malformed after repair); the reason is kept."""
