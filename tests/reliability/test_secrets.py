"""API keys come from the environment only: a whole synthesize/stats/filter/export/view cycle with a
recognisable key sends it to the server on every request and writes it nowhere (files, logs, manifest)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from mmcof_gen.config import DEFAULT_CONFIG
from tests.support.faults import FaultyScript, run_cli, sign_reader_vlm, vlm_config_yaml
from tests.support.scripted_server import ScriptedServer

KEY = "sk-test-SECRET-123456"
ENV = {"OPENAI_API_KEY": KEY}


def readable_bytes(path: Path) -> bytes:
    """A file's content as text would show it: parquet is decompressed to its rows first."""
    if path.suffix == ".parquet":
        return json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
    return path.read_bytes()


def test_the_key_is_sent_on_every_request_and_written_nowhere(sign_inputs, tmp_path):
    images, questions = sign_inputs
    script = FaultyScript(sign_reader_vlm, rate=0.3, seed=5, retry_after=0.05, stall=1.2)  # error records too
    with ScriptedServer(script) as server:
        config = vlm_config_yaml(tmp_path / "vlm.yaml", server.url, api_key_env="OPENAI_API_KEY", timeout=1.0)
        runs = [run_cli("synthesize", "--images", images, "--questions", questions, "--config", config,
                        "--out", tmp_path / "run", env=ENV)]
    runs += [run_cli(*args, env=ENV) for args in (
        ("stats", tmp_path / "run"), ("stats", tmp_path / "run", "--json"),
        ("filter", tmp_path / "run", "--out", tmp_path / "filtered", "--config", DEFAULT_CONFIG),
        ("export", tmp_path / "run", "--out", tmp_path / "sharegpt"),
        ("export", tmp_path / "run", "--out", tmp_path / "parquet", "--format", "parquet"),
        ("view", tmp_path / "run"))]
    assert [r.returncode for r in runs] == [0] * len(runs), [r.stderr for r in runs]

    assert server.requests and {h["authorization"] for h in server.headers} == {f"Bearer {KEY}"}
    assert "OPENAI_API_KEY" in (tmp_path / "run" / "manifest.json").read_text()  # the variable's name, not its value
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 20 and (tmp_path / "parquet" / "mmcof.parquet").exists()
    assert (tmp_path / "run" / "report.html").exists()
    for path in files:
        assert b"SECRET-123456" not in readable_bytes(path), path
    for run in runs:
        assert "SECRET-123456" not in run.stdout + run.stderr


def test_a_key_written_into_the_config_is_refused_without_echoing_it(sign_inputs, tmp_path):
    images, questions = sign_inputs
    config = vlm_config_yaml(tmp_path / "vlm.yaml", "http://127.0.0.1:9/v1")
    data = yaml.safe_load(config.read_text())
    data["models"]["planner"]["api_key"] = KEY
    config.write_text(yaml.safe_dump(data))
    done = run_cli("synthesize", "--images", images, "--questions", questions, "--config", config,
                   "--out", tmp_path / "run")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"mmcof-gen: {config}: models.planner.api_key: Extra inputs are not permitted")
    assert "SECRET" not in done.stdout + done.stderr and not (tmp_path / "run").exists()
