"""A real text LLM chooses among the tools' candidates (`make test-llm` starts the server: tests/llm/stage.sh).

The `llm-planner-ocr` pipeline (agent.planner_actions: choose, docs/planner.md) on generated scenes, planned three
ways over the same scenes, tasks and resolutions: (a) the rule-planned OCR agent (the default pipeline), (b) the
served LLM choosing among the numbered candidates RapidOCR proposes, (c) a uniformly random chooser over the same
candidates (seeded, tests/support/choosers.py). The LLM must solve at least half of the zoom tasks the rules solve
and at least twice the random chooser's share, every search must end with a verdict or a reason, every planner
call must cost at most MMCOF_LLM_MAX_CALL_SECONDS, and the accepted chains must validate and re-execute. The
figures go to MMCOF_LLM_FIGURES. Skipped without a server (MMCOF_LLM_URL unset).
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
from tests.support.choosers import random_chooser
from tests.support.proxy import RecordingProxy
from tests.support.scripted_server import ScriptedServer

URL = os.environ.get("MMCOF_LLM_URL", "")
MODEL = os.environ.get("MMCOF_LLM_MODEL", "")
SCENES = int(os.environ.get("MMCOF_LLM_SCENES", "2"))
RESOLUTIONS = os.environ.get("MMCOF_LLM_RESOLUTIONS", "448")
MAX_STEPS = int(os.environ.get("MMCOF_LLM_MAX_STEPS", "4"))
MAX_CALL_SECONDS = float(os.environ.get("MMCOF_LLM_MAX_CALL_SECONDS", "10"))
SEED = int(os.environ.get("MMCOF_LLM_SEED", "0"))  # the random chooser's
FIGURES = os.environ.get("MMCOF_LLM_FIGURES", "")
CLI = [sys.executable, "-m", "mmcof_gen.cli"]

pytestmark = [pytest.mark.llm, pytest.mark.skipif(not URL, reason="needs a text LLM server: run `make test-llm`")]


def cli(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stderr
    return done


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def planned(root: Path, name: str, url: str, model: str) -> None:
    """One run of the shipped llm-planner-ocr pipeline with its planner at `url`."""
    config = yaml.safe_load((resources.PIPELINES / "llm-planner-ocr.yaml").read_text())
    config["models"]["planner"].update(base_url=url, model=model)
    config["agent"].update(max_seconds=3000, max_steps=MAX_STEPS)  # searches queue for one server
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    cli("synthesize", "--images", root / "images", "--out", root / name, "--config", root / f"{name}.yaml",
        "--resolutions", RESOLUTIONS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The LLM-chosen run (through a recording proxy), the random-chosen run and the rule-planned run."""
    root = tmp_path_factory.mktemp("llm")
    generate_scenes(root / "scenes", count=SCENES)
    images = root / "images"
    images.mkdir()
    for scene in sorted((root / "scenes").glob("scene_*.jpg")):
        shutil.copy(scene, images / scene.name)
    with RecordingProxy(URL) as proxy:
        planned(root, "llm", proxy.url, MODEL)
    with ScriptedServer(random_chooser(SEED)) as server:
        planned(root, "random", server.url, "random-chooser")
    cli("synthesize", "--images", images, "--out", root / "rules", "--config", "default", "--resolutions", RESOLUTIONS)
    return root, proxy


def test_every_search_ends_with_a_verdict_or_a_reason_on_the_rule_agents_tasks(runs):
    root, _ = runs
    llm, rules = records(root / "llm/trajectories.jsonl"), records(root / "rules/trajectories.jsonl")
    assert llm and records(root / "llm/errors.jsonl") == records(root / "random/errors.jsonl") == []
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
    cli("export", root / "filtered", "--format", "sharegpt", "--out", root / "exported")
    cli("validate", root / "exported", "--report", root / "validate.json")
    assert json.loads((root / "validate.json").read_text())["ok"] is True


def figures(trajectories: list[dict]) -> dict:
    accepted = [t for t in trajectories if t["status"] == "accepted"]
    rejected = [t["reason"] for t in trajectories if t["status"] == "rejected"]
    reasons = Counter(reason.split(":")[0] for reason in rejected)  # "budget", "planner", "no verified answer ..."
    searched = [t for t in trajectories if t["needs_zoom"]]
    calls = [c for t in searched for s in t["steps"] for c in s["calls"] if c["role"] == "planner"]
    return {"searches": len(trajectories), "accepted": len(accepted),
            "direct": sum(not t["needs_zoom"] for t in accepted), "zoom_tasks": len(searched),
            "zoom_solved": sum(t["needs_zoom"] for t in accepted),
            "zoom_solved_ids": sorted(t["id"] for t in accepted if t["needs_zoom"]),
            "rejected": len(trajectories) - len(accepted), "rejected_reasons": dict(reasons.most_common()),
            "rejected_examples": sorted(set(rejected))[:6],
            "planner_calls_per_search": round(len(calls) / len(searched), 2) if searched else 0.0,
            "planner_tokens_per_search": round(sum(c["prompt_tokens"] + c["completion_tokens"] for c in calls)
                                               / len(searched), 1) if searched else 0.0,
            "seconds_per_planner_call": round(sum(c["seconds"] for c in calls) / len(calls), 2) if calls else 0.0,
            "slowest_planner_call": round(max((c["seconds"] for c in calls), default=0.0), 2)}


def test_the_llm_solves_half_the_rules_zoom_tasks_and_twice_the_random_choosers(runs):
    root, proxy = runs
    runs_ = {name: records(root / f"{name}/trajectories.jsonl") for name in ("llm", "random", "rules")}
    result = {"model": MODEL, "scenes": SCENES, "resolutions": RESOLUTIONS, "max_steps": MAX_STEPS,
              "random_seed": SEED, "tasks": len({t["task"]["id"] for t in runs_["llm"]}),
              **{f"{name}_planner": figures(trajectories) for name, trajectories in runs_.items()},
              "planner_requests": len(proxy.bodies)}
    if FIGURES:
        Path(FIGURES).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    llm, rules, chance = result["llm_planner"], result["rules_planner"], result["random_planner"]
    # the direct samples need no planner: every agent reads the whole frame where the question points
    assert llm["direct"] == rules["direct"] == chance["direct"]
    assert rules["zoom_solved"] > 0 and llm["zoom_tasks"] == chance["zoom_tasks"] > 0
    assert llm["zoom_solved"] >= rules["zoom_solved"] / 2
    assert llm["zoom_solved"] >= 2 * chance["zoom_solved"] and llm["zoom_solved"] > 0
    assert 0 < llm["slowest_planner_call"] <= MAX_CALL_SECONDS
