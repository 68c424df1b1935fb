"""The search agents. AGENTS is the one registry of them (`agent.kind`), read by config validation,
`synthesize`, the worker and the Ray executor. An entry names its class as "module:Class", imported when a run
needs it: the agents import `config`, which reads this registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmcof_gen.schema import named_object

if TYPE_CHECKING:  # (not config: it imports this registry)
    from mmcof_gen.models.detector import Detector
    from mmcof_gen.models.ocr import OcrEngine
    from mmcof_gen.prompts import Prompts


@dataclass(frozen=True)
class AgentKind:
    """One search agent: its class (a `SearchAgent`, agent/base.py) and what config validation asks of it."""

    cls: str
    """"module:Class"; the class has `build(config, prompts, engine, shared_detector)`"""
    model_roles: bool
    """it plays the model roles of `models` (it needs models.planner)"""
    prompts: str
    """the shipped prompts folder (`resources.prompts`) a config without prompts_dir uses"""

    def load(self) -> type:
        return named_object(self.cls)


AGENTS: dict[str, AgentKind] = {
    "ocr": AgentKind("mmcof_gen.agent.ocr_search:OcrSearchAgent", model_roles=False, prompts="template"),
    "vlm": AgentKind("mmcof_gen.agent.vlm_search:VlmSearchAgent", model_roles=True, prompts="agent"),
}


def agent_class(kind: str) -> type:
    """The `SearchAgent` class an `agent.kind` names."""
    return AGENTS[kind].load()


def build_agent(config, prompts: Prompts, engine: Callable[[], OcrEngine], shared_detector: Detector | None = None):
    """The agent a `PipelineConfig` names, with its models. `engine`: the worker's OCR engine, built on first call (the OCR
    agent's locator and reader); `shared_detector` stands in for a model of `models.detector` built here."""
    return agent_class(config.agent.kind).build(config, prompts, engine, shared_detector)
