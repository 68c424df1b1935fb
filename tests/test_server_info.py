"""The questions asked of a server before a run (models/server_info.py), on servers that are not vLLM: they
are left alone. What a real vLLM server answers is checked by tests/test_vllm_server.py (make test-vllm)."""

from __future__ import annotations

import pytest

from mmcof_gen.config import PipelineConfig
from mmcof_gen.errors import ConfigError
from mmcof_gen.models.chat import ChatModelConfig
from mmcof_gen.models.server_info import check_served, check_servers, server_info
from tests.support.scripted_server import ScriptedServer


def test_a_server_without_a_version_is_asked_nothing_more():
    with ScriptedServer([]) as server:  # answers every GET with a model list, so /version has no version
        planner = {"base_url": server.url, "model": "not-what-it-serves"}
        config = PipelineConfig.model_validate({"agent": {"kind": "vlm"}, "models": {"planner": planner}})
        assert check_servers(config) == {}
    assert server.requests == []  # no probe request


def test_an_unreachable_server_is_left_to_the_run():
    assert server_info(ChatModelConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout=2)) is None


def test_served_name_and_reply_budget_are_checked_against_what_the_server_said():
    info = {"version": "0.32.0", "models": {"qwen": 4096, "other": None}}
    config = ChatModelConfig(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct")
    with pytest.raises(ConfigError, match=r"^models.planner.model: http://127.0.0.1:8000/v1 does not serve "
                                          r"'Qwen/Qwen2.5-VL-7B-Instruct'; its /v1/models offers: other, qwen$"):
        check_served(info, config, "models.planner.model", 512, "agent.reply_tokens")
    served = config.model_copy(update={"model": "qwen"})
    check_served(info, served, "models.planner.model", 4095, "agent.reply_tokens")
    with pytest.raises(ConfigError, match=r"^agent.reply_tokens \(4096\) must be below the max_model_len \(4096\)"):
        check_served(info, served, "models.planner.model", 4096, "agent.reply_tokens")
    check_served(info, config.model_copy(update={"model": "other"}), "k", 10**6, "agent.reply_tokens")  # unknown len
