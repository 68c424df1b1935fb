"""The search agents. `agent_class` and `build_agent` are the one place that reads `agent.kind`; the agents
import `agent.base`, so they are imported here late, by the function that needs them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmcof_gen.agent.base import SearchAgent
    from mmcof_gen.config import PipelineConfig
    from mmcof_gen.models.detect import Detector
    from mmcof_gen.models.ocr import OcrEngine
    from mmcof_gen.prompts import Prompts


def agent_class(config: PipelineConfig) -> type[SearchAgent]:
    """The agent `agent.kind` names."""
    if config.agent.kind == "vlm":
        from mmcof_gen.agent.search import VlmSearchAgent

        return VlmSearchAgent
    from mmcof_gen.agent.ocr_search import OcrSearchAgent

    return OcrSearchAgent


def build_agent(config: PipelineConfig, prompts: Prompts, engine: Callable[[], OcrEngine],
                shared_detector: Detector | None = None) -> SearchAgent:
    """The configured agent with its models. `engine`: the worker's OCR engine, built on first call (the OCR
    agent's locator and reader); `shared_detector` stands in for a model of `models.detector` built here."""
    if config.agent.kind == "vlm":
        from mmcof_gen.agent.search import Roles, VlmSearchAgent

        return VlmSearchAgent(Roles.build(config.models, shared_detector), prompts, config.agent)
    from mmcof_gen.agent.ocr_search import OcrSearchAgent

    return OcrSearchAgent(engine(), prompts, config.agent, config.ocr.min_read_height)
