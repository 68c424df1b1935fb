"""The shipped `llm-planner-vlm-tools` pipeline run as a user runs it: `mmcof-gen synthesize`, `filter` and
`export` through the CLI, with the planner and the reader served over HTTP (scripted) and a tiny random
GroundingDINO as locator. Only the URLs, the detector's weights and the resolutions differ from the shipped YAML."""

from __future__ import annotations

import json
import re

import yaml

from mmcof_gen import resources
from mmcof_gen.agent.vlm_search import TextPlannerAction
from mmcof_gen.store import RunStore
from tests.support.faults import SIGNS, request_images, run_cli, sign_reader_vlm, write_sign_inputs
from tests.support.scripted_server import Reply, ScriptedServer, planner_steps
from tests.support.tiny_models import build_tiny_grounding_dino

IMAGE_SIZE = (640, 480)  # write_sign_inputs' images
SIGN = SIGNS[0]          # the sign of its first image, in original pixels
RESOLUTIONS = [448, 672]


def schema_name(body: dict) -> str:
    return body["response_format"]["json_schema"]["name"]


def in_frame(box, width: int, height: int) -> list[int]:
    """A box of the original image in the pixels of a width x height frame."""
    sx, sy = width / IMAGE_SIZE[0], height / IMAGE_SIZE[1]
    return [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]


def blind_planner(body: dict) -> Reply:
    """A planner that cannot see: it knows where the sign is and learns the frame size from the prompt, so it
    locates (ignoring the random detector's boxes), zooms around the sign, reads it, then answers."""
    if schema_name(body) == "Targets":
        return Reply('{"missing": ["the red sign"]}')
    width, height = map(int, re.search(r"it is (\d+)x(\d+) pixels", body["messages"][0]["content"]).groups())
    x1, y1, x2, y2 = in_frame(SIGN, width, height)
    w, h = x2 - x1, y2 - y1
    plan = [{"action": "locate", "phrase": "the red sign"},
            {"action": "zoom", "box": [max(0, x1 - w), max(0, y1 - h), min(width, x2 + w), min(height, y2 + h)]},
            {"action": "read", "box": [x1, y1, x2, y2]}]
    steps = planner_steps(body)
    action = plan[steps] if steps < len(plan) else {"action": "answer", "answer": "red"}
    return Reply(json.dumps({"thought": "Next.", **action}))


def shipped_pipeline(path, planner_url: str, reader_url: str, detector: str):
    """The shipped YAML with only what a test must change: the servers, the detector's weights, fewer R."""
    config = yaml.safe_load(resources.pipelines()["llm-planner-vlm-tools"].read_text(encoding="utf-8"))
    assert not config["models"]["planner"]["vision"] and config["models"]["detector"]["backend"] == "grounding-dino"
    config["resolutions"] = RESOLUTIONS
    config["models"]["planner"].update(base_url=planner_url, backoff_seconds=0.01, max_retries=2)
    config["models"]["reader"].update(base_url=reader_url, backoff_seconds=0.01, max_retries=2)
    config["models"]["detector"]["model"] = str(detector)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_the_shipped_text_planner_with_vlm_tools_makes_a_verified_zoom_chain_through_the_cli(tmp_path):
    images, questions = write_sign_inputs(tmp_path / "inputs", count=1)  # "red" (zoom, accepted), "blue" (rejected)
    gdino = build_tiny_grounding_dino(tmp_path / "gdino")
    run = tmp_path / "run"
    with ScriptedServer(blind_planner) as planner, ScriptedServer(sign_reader_vlm) as reader:
        config = shipped_pipeline(tmp_path / "pipeline.yaml", planner.url, reader.url, gdino)
        done = run_cli("synthesize", "--images", images, "--questions", questions, "--config", config,
                       "--out", run, timeout=240)
        planner_requests, reader_requests = list(planner.requests), list(reader.requests)
    assert done.returncode == 0, done.stderr

    # every (task, R) is decided (accepted and verified, or rejected with a reason); the image that
    # questions.jsonl names but that does not exist is an error record
    assert (run / "trajectories.jsonl").exists()
    store = RunStore(run)
    trajectories = list(store.trajectories())
    assert sorted((t.task.answer, t.view.resolution) for t in trajectories) == [
        (answer, r) for answer in ("blue", "red") for r in RESOLUTIONS]
    assert all(t.status == "accepted" and t.verdict.correct or t.status == "rejected" and t.reason
               for t in trajectories)
    assert [e.image for e in store.errors()] == ["missing.png"]

    accepted = [t for t in trajectories if t.status == "accepted"]
    assert {t.task.answer for t in accepted} == {"red"} and len(accepted) == len(RESOLUTIONS)
    for t in accepted:  # zoom around the sign, then the sign itself: the evidence the reader read "red" from
        sign = in_frame(SIGN, t.view.width, t.view.height)
        assert t.needs_zoom and t.answer == t.task.answer == "red" and t.verdict.correct
        assert len(t.chain) == 2 and list(t.chain[-1].box) == sign
        assert [s.action for s in t.steps][:4] == ["read", "locate", "locate", "zoom"]
    assert {t.reason for t in trajectories if t.task.answer == "blue"} == {
        "budget: 12 planner steps without a verified answer"}  # the reader only ever sees red
    assert {t.provenance.models["locator"] for t in trajectories} == {f"grounding-dino:{gdino}"}
    assert {(t.provenance.models["planner"], t.provenance.models["reader"]) for t in trajectories} == {
        ("openai:Qwen/Qwen2.5-7B-Instruct", "openai:Qwen/Qwen2.5-VL-7B-Instruct")}  # the shipped served models

    # the planner is told, never shown; the reader sees the frame or a crop in every request
    assert planner_requests and not any(request_images(r) for r in planner_requests)
    assert {schema_name(r) for r in planner_requests} == {"Targets", "PlannerAction"}
    assert all(r["response_format"]["json_schema"]["schema"] == TextPlannerAction.model_json_schema()
               for r in planner_requests if schema_name(r) == "PlannerAction")
    assert reader_requests and all(len(request_images(r)) == 1 for r in reader_requests)
    assert {schema_name(r) for r in reader_requests} == {"ReaderReply"}

    # the zoom samples survive every filter rule (re-execution re-crops them) and are exported
    filtered = tmp_path / "filtered"
    done = run_cli("filter", run, "--out", filtered, "--config", config)
    assert done.returncode == 0, done.stderr
    report = json.loads((filtered / "filter_report.json").read_text(encoding="utf-8"))
    assert report["rules"]["reexecution"]["enabled"] and report["rules"]["reexecution"]["dropped"] == 0
    assert {d["rule"] for d in report["dropped_records"]} == {"verified"}  # only the rejected "blue" searches
    assert sorted(t.id for t in RunStore(filtered).trajectories()) == sorted(t.id for t in accepted)

    exported = tmp_path / "export"
    done = run_cli("export", filtered, "--format", "sharegpt", "--out", exported)
    assert done.returncode == 0, done.stderr
    samples = json.loads((exported / "mmcof.json").read_text(encoding="utf-8"))
    assert sorted(s["id"] for s in samples) == sorted(t.id for t in accepted)
    assert all(len(s["images"]) == 3 for s in samples)  # the frame and the two crops of the chain
