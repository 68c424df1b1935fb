"""The VLM agent's servers, checked before a run: every role it serves over HTTP answers, and every vLLM
server among them takes the names, the reply budget and the images a search of this pipeline sends.

It lives with the agent because only the agent knows its roles and how many images each request of a role
holds; models/server_info.py asks one server the questions.
"""

from __future__ import annotations

from mmcof_gen.config import PipelineConfig
from mmcof_gen.models import server_info

# the roles a pipeline may serve over HTTP, in the order they are checked
ROLES = ("planner", "reader", "locator", "verifier", "summariser", "task_writer", "second_reader", "small_reader")


def check_servers(config: PipelineConfig, wait_seconds: float = 0.0) -> dict[str, dict]:
    """Refuse a server that does not answer (after `wait_seconds` of polling), then ask every vLLM server of
    the pipeline's roles and refuse what cannot work; base URL -> what it said."""
    models = config.models
    # the most images one request of each role holds: the planner sees the frame and its zooms, the
    # summariser the frame and every kept crop (the zooms and the evidence box)
    images = {"planner": config.agent.max_zooms + 1, "summariser": config.agent.max_zooms + 2}
    served = {role: model for role in ROLES
              if (model := getattr(models, role)) is not None and model.backend == "openai"}
    server_info.await_servers(served, wait_seconds, config._file)
    servers: dict[str, dict | None] = {}
    for role, model in served.items():
        if model.base_url not in servers:
            servers[model.base_url] = server_info.server_info(model)
        info = servers[model.base_url]
        if info is None:
            continue
        server_info.check_served(info, model, f"models.{role}.model", config.agent.reply_tokens,
                                 "agent.reply_tokens")
        if role in images and model.vision:  # a text-only planner or summariser is sent no image
            server_info.check_images(model, images[role], f"models.{role}")
    return {url: info for url, info in servers.items() if info is not None}
