"""A real text LLM plans over RapidOCR's locate and read (`make test-llm` starts the server: tests/llm/stage.sh).

Gemma-3-270M (a base-size model) served by llama-cpp-python with grammar-constrained JSON plans the
`llm-planner-ocr` pipeline on generated scenes. It plans badly, and that is not what is tested: every search
must end with a verdict or a reason, every reply must be JSON, no request may carry an image, and every
accepted chain must be verified and re-executable. The share it solves is measured against the rule-planned
OCR agent (the default pipeline) on the same scenes, tasks and resolutions, and written to MMCOF_LLM_FIGURES.
Skipped without a server (MMCOF_LLM_URL unset).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mmcof_gen import resources
from mmcof_gen.scenes import generate_scenes
from tests.support.proxy import RecordingProxy

URL = os.environ.get("MMCOF_LLM_URL", "")
MODEL = os.environ.get("MMCOF_LLM_MODEL", "")
SCENES = int(os.environ.get("MMCOF_LLM_SCENES", "1"))
RESOLUTIONS = os.environ.get("MMCOF_LLM_RESOLUTIONS", "448")
MAX_STEPS = int(os.environ.get("MMCOF_LLM_MAX_STEPS", "3"))  # grammar decoding over Gemma's 262k-token vocabulary
# costs seconds per token on a shared 2-core machine: a few planner steps per search keep the stage in budget
FIGURES = os.environ.get("MMCOF_LLM_FIGURES", "")
CLI = [sys.executable, "-m", "mmcof_gen.cli"]

pytestmark = [pytest.mark.llm, pytest.mark.skipif(not URL, reason="needs a text LLM server: run `make test-llm`")]


def cli(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr
    return done


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The LLM-planned run (through a recording proxy) and the rule-planned OCR run of the same scenes."""
    root = tmp_path_factory.mktemp("llm")
    generate_scenes(root / "scenes", count=SCENES)
    images = root / "images"
    images.mkdir()
    for scene in sorted((root / "scenes").glob("scene_*.jpg")):
        shutil.copy(scene, images / scene.name)
    config = yaml.safe_load((resources.PIPELINES / "llm-planner-ocr.yaml").read_text())
    with RecordingProxy(URL) as proxy:
        config["models"]["planner"].update(base_url=proxy.url, model=MODEL)
        config["agent"].update(max_seconds=3000, max_steps=MAX_STEPS)  # searches queue for one server
        (root / "llm.yaml").write_text(yaml.safe_dump(config))
        cli("synthesize", "--images", images, "--out", root / "llm", "--config", root / "llm.yaml",
            "--resolutions", RESOLUTIONS)
    cli("synthesize", "--images", images, "--out", root / "rules", "--config", "default", "--resolutions", RESOLUTIONS)
    return root, proxy


def test_every_search_ends_with_a_verdict_or_a_reason_on_the_rule_agents_tasks(runs):
    root, _ = runs
    llm, rules = records(root / "llm/trajectories.jsonl"), records(root / "rules/trajectories.jsonl")
    assert llm and records(root / "llm/errors.jsonl") == []
    assert sorted(t["id"] for t in llm) == sorted(t["id"] for t in rules)  # the same tasks at the same R
    for t in llm:
        assert t["status"] in ("accepted", "rejected")
        assert (t["verdict"] or {}).get("correct") if t["status"] == "accepted" else t["reason"]


def test_the_planner_is_sent_text_only_and_every_reply_is_json(runs):
    _, proxy = runs
    assert proxy.bodies and len(proxy.replies) == len(proxy.bodies)
    assert not any(isinstance(m["content"], list) for body in proxy.bodies for m in body["messages"])
    assert all(body["response_format"]["type"] == "json_object" for body in proxy.bodies)
    for reply in proxy.replies:
        json.loads(json.loads(reply)["choices"][0]["message"]["content"])


def test_accepted_chains_are_verified_and_re_execute(runs):
    root, _ = runs
    cli("filter", root / "llm", "--out", root / "filtered", "--config", root / "llm.yaml")
    report = json.loads((root / "filtered/filter_report.json").read_text())
    assert report["rules"]["reexecution"] == {"enabled": True, "dropped": 0, "examples": []}
    assert report["rules"]["verified"]["dropped"] == sum(t["status"] == "rejected"
                                                         for t in records(root / "llm/trajectories.jsonl"))


def figures(trajectories: list[dict]) -> dict:
    accepted = [t for t in trajectories if t["status"] == "accepted"]
    rejected = [t["reason"] for t in trajectories if t["status"] == "rejected"]
    reasons = Counter(reason.split(":")[0] for reason in rejected)  # "budget", "planner", "no verified answer ..."
    return {"searches": len(trajectories), "accepted": len(accepted),
            "direct": sum(not t["needs_zoom"] for t in accepted), "zoom": sum(t["needs_zoom"] for t in accepted),
            "rejected": len(trajectories) - len(accepted), "rejected_reasons": dict(reasons.most_common()),
            "rejected_examples": sorted(set(rejected))[:6],
            "share_solved": round(len(accepted) / len(trajectories), 3) if trajectories else 0.0}


def test_share_solved_against_the_rule_planned_ocr_agent(runs):
    root, proxy = runs
    llm, rules = records(root / "llm/trajectories.jsonl"), records(root / "rules/trajectories.jsonl")
    usage = [json.loads(reply).get("usage", {}) for reply in proxy.replies]
    result = {"model": MODEL, "scenes": SCENES, "resolutions": RESOLUTIONS, "max_steps": MAX_STEPS,
              "tasks": len({t["task"]["id"] for t in llm}), "llm_planner": figures(llm),
              "rule_planner": figures(rules), "planner_requests": len(proxy.bodies),
              "planner_tokens": sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage)}
    solved_by_rules = {t["id"] for t in rules if t["status"] == "accepted"}
    result["llm_solved_that_rules_did_not"] = sum(t["status"] == "accepted" and t["id"] not in solved_by_rules
                                                  for t in llm)
    if FIGURES:
        Path(FIGURES).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    # the direct samples need no planner: both agents read the whole frame where the question points
    assert result["llm_planner"]["direct"] == result["rule_planner"]["direct"]
