"""The questions asked of a server before a run (models/server_info.py): a server that does not answer refuses
the run in one line, or is waited for (--wait-for-servers); servers that are not vLLM are asked nothing more. What a real vLLM server answers is checked by tests/test_vllm_server.py (make test-vllm)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mmcof_gen import resources
from mmcof_gen.config import PipelineConfig, load_config
from mmcof_gen.errors import ConfigError
from mmcof_gen.models.chat import ChatModelConfig
from mmcof_gen.agent.servers import check_servers
from mmcof_gen.models.server_info import check_served, server_command
from tests.support.runs import write_noise_image
from tests.support.scripted_server import ScriptedServer
from tests.support.sign_model import picture, scripted_model

CLI = [sys.executable, "-m", "mmcof_gen.cli"]


def test_a_server_without_a_version_is_asked_nothing_more():
    with ScriptedServer([]) as server:  # answers every GET with a model list, so /version has no version
        planner = {"base_url": server.url, "model": "not-what-it-serves"}
        config = PipelineConfig.model_validate({"agent": {"kind": "vlm"}, "models": {"planner": planner}})
        assert check_servers(config) == {}
    assert server.requests == []  # no probe request


def closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return sock.getsockname()[1]


def vlm_pipeline(path: Path, port: int) -> Path:
    """A pipeline YAML whose header gives the server's command, as the shipped ones do, and whose model is there."""
    path.write_text(HEADER.format(port=port) + yaml.safe_dump({
        "agent": {"kind": "vlm"}, "resolutions": [448], "prompts_dir": str(resources.prompts("agent")),
        "models": {"planner": {"base_url": f"http://127.0.0.1:{port}/v1", "model": "scripted-model",
                               "backoff_seconds": 0.01}}}))
    return path


HEADER = """# A test pipeline; start its server with
#   vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port {port} \\
#       --limit-mm-per-prompt '{{"image": 6}}'
"""
SERVE = "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port {port} --limit-mm-per-prompt '{{\"image\": 6}}'"


def test_a_server_that_does_not_answer_refuses_the_run_before_any_work_in_one_line(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (448, 336), 0)
    port = closed_port()
    config = vlm_pipeline(tmp_path / "vlm.yaml", port)
    start = time.monotonic()
    done = subprocess.run([*CLI, "synthesize", "--images", images, "--config", config, "--out", tmp_path / "run"],
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (2, (
        f"mmcof-gen: models.planner: no server answers at http://127.0.0.1:{port}/v1; start it first "
        f"({SERVE.format(port=port)}), or pass --wait-for-servers SECONDS to wait for it\n"))
    assert not (tmp_path / "run").exists() and time.monotonic() - start < 30


def test_the_shipped_pipelines_name_the_command_of_each_server():
    assert server_command(resources.PIPELINES / "vllm-qwen2.5-vl.yaml", "http://localhost:8000/v1") == (
        "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 8000 --max-model-len 32768 --limit-mm-per-prompt "
        """'{"image": 6}' --structured-outputs-config '{"backend": "xgrammar"}'""")
    tools = resources.PIPELINES / "llm-planner-vlm-tools.yaml"
    assert server_command(tools, "http://localhost:8001/v1") == (
        """vllm serve Qwen/Qwen2.5-7B-Instruct --port 8001 --structured-outputs-config '{"backend": "xgrammar"}'""")
    assert server_command(tools, "http://localhost:9999/v1") is None
    assert server_command(resources.PIPELINES / "llm-planner-ocr.yaml", "http://localhost:8080/v1") == (
        "python -m llama_cpp.server --model gemma-3-270m-q4_k_m.gguf --model_alias gemma-3-270m --port 8080")


def test_wait_for_servers_polls_until_a_late_server_answers_or_times_out(tmp_path):
    port = closed_port()
    config = load_config(vlm_pipeline(tmp_path / "vlm.yaml", port))
    start = time.monotonic()
    with pytest.raises(ConfigError, match=rf"^models.planner: no server answers at http://127.0.0.1:{port}/v1 "
                                          r"within 1.5 s; start it first \(vllm serve "):
        check_servers(config, wait_seconds=1.5)
    assert 1.5 <= time.monotonic() - start < 10
    late = ScriptedServer([], port=port)
    timer = threading.Timer(2.0, late.__enter__)
    timer.start()
    try:
        start = time.monotonic()
        assert check_servers(config, wait_seconds=60) == {}
        assert 2.0 <= time.monotonic() - start < 20
    finally:
        timer.join()
        late.__exit__(None, None, None)


def test_a_late_server_serves_a_run_started_with_wait_for_servers(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture().resize((896, 672), Image.NEAREST).save(images / "sign.png")
    questions = tmp_path / "tasks.jsonl"
    questions.write_text(json.dumps({"image": "sign.png", "question": "What colour is the small sign?",
                                     "answer": "red", "bbox": [600, 400, 680, 460]}) + "\n")
    port = closed_port()
    run = subprocess.Popen([*CLI, "synthesize", "--images", images, "--questions", questions, "--config",
                            vlm_pipeline(tmp_path / "vlm.yaml", port), "--out", tmp_path / "run",
                            "--wait-for-servers", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert run.poll() is None  # still waiting
    with ScriptedServer(scripted_model(), port=port):
        stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    assert stdout.startswith("1 accepted (0 direct, 1 zoom), 0 rejected, 0 errors")


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
