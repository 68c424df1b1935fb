"""The VLM search agent with scripted model replies over real HTTP (127.0.0.1), and with a tiny Qwen2.5-VL."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections import defaultdict

import pytest
import yaml
from PIL import Image

from mmcof_gen import resources
from mmcof_gen import cof_format
from mmcof_gen.agent.vlm_search import PlannerAction, Roles, VlmSearchAgent, adjust_box, chain_boxes
from mmcof_gen.agent.verify import box_hint
from mmcof_gen.answers import as_option
from mmcof_gen.config import AgentConfig, PipelineConfig
from mmcof_gen.imaging import crop_zoom, frame_from_image, image_sha256
from mmcof_gen.models.chat import ChatError, ChatModelConfig, chat_model, data_url
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Provenance, Task, Trajectory, View
from tests.support.scripted_server import Reply, ScriptedServer, planner_steps
from tests.support.sign_model import action, frame_box, picture, scripted_model, sent_images

PROMPTS = Prompts(resources.prompts("agent"))
EVIDENCE = [300, 200, 340, 230]   # frame pixels of the red sign
ZOOM = [260, 170, 380, 260]       # a coarser box around it


def make_view(frame: Image.Image, original: Image.Image) -> View:
    return View(resolution=448, width=frame.width, height=frame.height, original_width=original.width,
                original_height=original.height, frame_sha256=image_sha256(frame))


TASK = Task(id="t1", image="sign.png", image_sha256="0" * 64, question="What colour is the small sign?",
            answer="red", gt_boxes=[tuple(EVIDENCE)], source="questions", question_type="attribute")


def by_schema(replies: dict[str, list[Reply]]):
    """A server script that answers each role by the JSON schema its request names."""
    queues = defaultdict(list, {name: list(items) for name, items in replies.items()})

    def answer(body: dict) -> Reply:
        name = body["response_format"]["json_schema"]["name"]
        return queues[name].pop(0) if queues[name] else Reply(status=500)
    return answer


def run_agent(server: ScriptedServer, config: AgentConfig | None = None, summariser: bool = False, detector=None):
    model = ChatModelConfig(base_url=server.url, model="scripted-model", backoff_seconds=0.01,
                            max_backoff_seconds=0.05, max_retries=2, timeout=5)
    roles = Roles(planner=chat_model(model), reader=chat_model(model), locator=None if detector else chat_model(model),
                  detector=detector, summariser=chat_model(model) if summariser else None)
    original = picture()
    frame = frame_from_image(original, 448)
    view = make_view(frame, original)
    result = asyncio.run(VlmSearchAgent(roles, PROMPTS, config or AgentConfig(kind="vlm")).run(TASK, frame, view))
    trajectory = Trajectory(id="t1-r448", task=TASK, view=view, steps=result.steps, chain=result.chain,
                            final_thought=result.final_thought, answer=result.answer, verdict=result.verdict,
                            needs_zoom=result.needs_zoom, provenance=Provenance(package_version="0", config_hash="x"),
                            status="accepted" if result.accepted else "rejected", reason=result.reason)
    return trajectory, frame


FULL_CHAIN = {
    "ReaderReply": [Reply('{"answer": "blue"}'), Reply('{"answer": "red"}')],
    "Targets": [Reply('{"missing": ["the small sign"]}')],
    "PlannerAction": [action(thought="Find the sign.", action="locate", phrase="the small sign"),
                      action(thought="Look closer around it.", action="zoom", box=ZOOM),
                      action(thought="Read the sign.", action="read", box=EVIDENCE)],
    "LocateReply": [Reply(json.dumps({"boxes": [EVIDENCE]}))],
}


def test_the_planner_is_one_conversation_from_naming_the_targets_sent_its_replies_as_it_wrote_them():
    """A prefix-caching server holds the tokens of a request and of the reply it generated: each planner request
    must begin with the one before it, that reply repeated byte for byte, the first with the target naming's."""
    with ScriptedServer(by_schema(FULL_CHAIN)) as server:
        run_agent(server)
    planner = [body["messages"] for body in server.requests
               if body["response_format"]["json_schema"]["name"] in ("Targets", "PlannerAction")]
    written = [reply.content for reply in FULL_CHAIN["Targets"] + FULL_CHAIN["PlannerAction"]]
    assert [[m["content"] for m in messages if m["role"] == "assistant"] for messages in planner] == [
        [], written[:1], written[:2], written[:3]]
    for before, after in zip(planner, planner[1:]):
        assert after[:len(before)] == before and after[len(before)]["role"] == "assistant"
    assert planner[1][-1]["content"] == ("From the whole image the reader answered 'blue'; "
                                         "read 'blue', expected 'red'. Your first action?")


def test_full_zoom_chain_locate_zoom_read_verify_summarise():
    with ScriptedServer(by_schema(FULL_CHAIN)) as server:
        trajectory, frame = run_agent(server)
    assert trajectory.status == "accepted" and trajectory.needs_zoom
    assert trajectory.answer == "red"
    assert [list(step.box) for step in trajectory.chain] == [ZOOM, EVIDENCE]
    assert [s.action for s in trajectory.steps] == ["read", "locate", "locate", "zoom", "read", "answer"]
    assert trajectory.steps[1].thought == "I cannot answer; these objects are missing or unclear: the small sign."
    assert trajectory.steps[2].detections[0].box == tuple(EVIDENCE)
    assert trajectory.steps[0].observation == ("the reader answered 'blue'; verifier: read 'blue', expected 'red'")
    messages = cof_format.trajectory_messages(trajectory)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == (
        "<think> I cannot answer yet; these objects are missing or unclear: the small sign. It appears around "
        f"{ZOOM}, too small to see; I will zoom in on it. </think>\n<tool_call>\n"
        f'{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": {json.dumps(ZOOM)}}}}}\n</tool_call>')
    assert messages[4]["content"] == (
        "<think> The zoomed view shows the small sign, but the detail is still too small. I will zoom in closer at "
        f"{EVIDENCE}. </think>\n<tool_call>\n"
        f'{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": {json.dumps(EVIDENCE)}}}}}\n</tool_call>')
    assert messages[6]["content"] == ("<think> The zoomed view shows the small sign clearly: the answer is red. "
                                      "</think>\n<answer> red </answer>")
    assert messages[3]["content"] == cof_format.TOOL_RESULT
    # the planner saw the exact crop of its zoom; the reader read the exact crop of the evidence box
    planner_after_zoom = [r for r in server.requests if r["response_format"]["json_schema"]["name"] == "PlannerAction"][2]
    assert sent_images(planner_after_zoom)[-1].tobytes() == crop_zoom(frame, ZOOM).tobytes()
    evidence_read = [r for r in server.requests if r["response_format"]["json_schema"]["name"] == "ReaderReply"][1]
    assert sent_images(evidence_read) == [crop_zoom(frame, EVIDENCE)]
    calls = [(c.role, c.prompt_tokens, c.completion_tokens) for s in trajectory.steps for c in s.calls]
    assert calls == [("reader", 10, 5), ("planner", 10, 5), ("planner", 10, 5), ("locator", 10, 5),
                     ("planner", 10, 5), ("planner", 10, 5), ("reader", 10, 5)]


def test_direct_sample_when_the_whole_frame_answers():
    with ScriptedServer(by_schema({"ReaderReply": [Reply('{"answer": "Red."}')]})) as server:
        trajectory, _ = run_agent(server)
    assert trajectory.status == "accepted" and not trajectory.needs_zoom and trajectory.chain == []
    messages = cof_format.trajectory_messages(trajectory)
    assert len(messages) == 3
    assert messages[2]["content"] == ("<think> The detail the question asks about is clear enough in the image at "
                                      "this resolution, so no zoom is needed: the answer is Red.. </think>\n"
                                      "<answer> Red. </answer>")


def test_faults_out_of_frame_box_malformed_reply_429_and_dropped_connection_end_accepted():
    replies = {
        "ReaderReply": [Reply(status=429, headers={"Retry-After": "0.01"}), Reply('{"answer": "blue"}'),
                        Reply(drop=True), Reply('{"answer": "red"}')],
        "Targets": [Reply('{"missing": ["the sign"]}')],
        "PlannerAction": [Reply('{"thought": "zoom", "action": "zoom"}'),  # no box: repaired
                          action(thought="Zoom there.", action="zoom", box=[-50, 0, 9999, 10]),
                          action(thought="Inside the frame.", action="read", box=EVIDENCE)],
    }
    with ScriptedServer(by_schema(replies)) as server:
        trajectory, _ = run_agent(server)
    assert trajectory.status == "accepted"
    assert [list(s.box) for s in trajectory.chain] == [EVIDENCE]
    zoom_step = trajectory.steps[2]
    assert zoom_step.action == "zoom" and zoom_step.box is None
    assert len(zoom_step.calls) == 2  # the malformed reply and its repair
    assert zoom_step.observation == ("invalid box: box [-50, 0, 9999, 10] is outside the 448x336 image "
                                     "(x must be within 0..448, y within 0..336)")
    assert [c.retries for s in trajectory.steps for c in s.calls if c.role == "reader"] == [1, 1]
    repair = server.requests[4]["messages"][-1]["content"]
    assert repair.startswith("Your reply is not valid: reply: Value error, action zoom needs box")


def test_reply_malformed_after_repair_rejects_with_the_reason():
    replies = {"ReaderReply": [Reply('{"answer": "blue"}')], "Targets": [Reply("no json"), Reply("{}")]}
    with ScriptedServer(by_schema(replies)) as server:
        trajectory, _ = run_agent(server)
    assert trajectory.status == "rejected"
    assert trajectory.reason.startswith("planner: malformed reply after one repair attempt: missing: Field required")
    assert [c.role for c in trajectory.steps[1].calls] == ["planner", "planner"]


def test_wrong_reading_gets_a_hint_and_step_budget_rejects():
    replies = {"ReaderReply": [Reply('{"answer": "blue"}'), Reply('{"answer": "blue"}')],
               "Targets": [Reply('{"missing": ["the sign"]}')],
               "PlannerAction": [action(thought="Read there.", action="read", box=[0, 0, 40, 40]),
                                 action(thought="Answer.", action="answer", answer="green")]}
    with ScriptedServer(by_schema(replies)) as server:
        trajectory, _ = run_agent(server, AgentConfig(kind="vlm", max_steps=2))
    assert trajectory.status == "rejected"
    assert trajectory.reason == "budget: 2 planner steps without a verified answer"
    assert trajectory.steps[2].observation == ("the reader answered 'blue'; verifier: read 'blue', expected 'red'; "
                                               "wrong object: the target is not in this box")
    assert trajectory.steps[3].observation.startswith("verifier: the answer is not right")


def test_llm_summariser_writes_one_thought_per_kept_zoom():
    replies = {**FULL_CHAIN, "Summary": [
        Reply('{"thoughts": ["only one"], "final_thought": "x"}'),  # two zooms were kept: repaired
        Reply('{"thoughts": ["The sign is tiny; zoom on its area.", "Closer on the sign."], '
              '"final_thought": "It is red."}')]}
    with ScriptedServer(by_schema(replies)) as server:
        trajectory, frame = run_agent(server, summariser=True)
    assert [s.thought for s in trajectory.chain] == ["The sign is tiny; zoom on its area.", "Closer on the sign."]
    assert trajectory.final_thought == "It is red."
    summary_request = [r for r in server.requests if r["response_format"]["json_schema"]["name"] == "Summary"][0]
    assert sent_images(summary_request) == [frame, crop_zoom(frame, ZOOM), crop_zoom(frame, EVIDENCE)]
    assert [c.role for c in trajectory.steps[-1].calls] == ["summariser", "summariser"]


def test_server_down_raises_chat_error_with_the_retries():
    with ScriptedServer([]) as server:  # every request: 500
        with pytest.raises(ChatError, match="gave up after 2 retries: HTTP 500"):
            run_agent(server)


def test_adjust_box_enlarges_shrinks_and_shifts_within_the_frame():
    assert adjust_box((100, 100, 140, 120), "enlarge", None, 448, 336) == (90, 95, 150, 125)
    assert adjust_box((100, 100, 160, 130), "shrink", None, 448, 336) == (110, 105, 150, 125)
    assert adjust_box((100, 100, 140, 120), "shift", "left", 448, 336) == (80, 100, 120, 120)
    assert adjust_box((420, 100, 448, 120), "shift", "right", 448, 336) == (434, 100, 448, 120)


def test_chain_keeps_zooms_holding_the_evidence_coarse_to_fine():
    kept, detours = chain_boxes([(0, 0, 50, 50), (250, 150, 400, 300), (280, 180, 360, 250)], (300, 200, 340, 230))
    assert kept == [(250, 150, 400, 300), (280, 180, 360, 250), (300, 200, 340, 230)]
    assert detours == [(0, 0, 50, 50)]


def test_box_hints_and_option_letters():
    target = (100, 100, 120, 110)
    assert box_hint((0, 0, 50, 50), target) == "wrong object: the target is not in this box"
    assert box_hint((105, 95, 130, 115), target) == "enlarge the box: it cuts off part of the target"
    assert box_hint((0, 0, 300, 300), target) == "shrink the box: the target is only a small part of it"
    assert as_option("(b)", ["red", "blue"]) == "blue"
    assert as_option("Blue", ["red", "blue"]) == "blue"
    assert as_option("C", ["red", "blue"]) == "C"


def test_planner_action_names_its_missing_arguments():
    with pytest.raises(ValueError, match="action adjust needs direction"):
        PlannerAction(thought="", action="adjust", box=[1, 2, 3, 4], instruction="shift")


def test_transformers_backend_plays_the_planner_role(tmp_path):
    from tests.support.tiny_models import build_tiny_qwen25vl

    tiny = ChatModelConfig(backend="transformers", model=str(build_tiny_qwen25vl(tmp_path / "qwen")), device="cpu")
    model = chat_model(tiny)
    original = picture()
    frame = frame_from_image(original, 448)
    agent = VlmSearchAgent(Roles(planner=model, reader=model), PROMPTS, AgentConfig(kind="vlm", reply_tokens=16))
    result = asyncio.run(agent.run(TASK, frame, make_view(frame, original)))
    # a random tiny model cannot write the JSON: the reply is repaired once, then the search ends with the reason
    assert not result.accepted
    assert result.reason.startswith("planner: malformed reply after one repair attempt")
    planner = [c for s in result.steps for c in s.calls if c.role == "planner"]
    assert len(planner) == 2 and all(c.model == tiny.model and 1 <= c.completion_tokens <= 16 for c in planner)


def test_synthesize_cli_runs_the_vlm_pipeline_against_a_server(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    picture().resize((896, 672), Image.NEAREST).save(images / "sign.png")
    (tmp_path / "tasks.jsonl").write_text(json.dumps({
        "image": "sign.png", "question": "What colour is the small sign?", "answer": "red",
        "bbox": [600, 400, 680, 460], "question_type": "attribute"}) + "\n" + json.dumps({
        "image": "../outside.png", "question": "Refused?", "answer": "x"}) + "\n")
    with ScriptedServer(scripted_model()) as server:
        model = {"backend": "openai", "base_url": server.url, "model": "scripted-model", "backoff_seconds": 0.01,
                 "price_input_per_million": 1.0, "price_output_per_million": 2.0}
        config = {"name": "vlm-test", "resolutions": [448, 672], "prompts_dir": str(resources.prompts("agent")),
                  "agent": {"kind": "vlm"}, "models": {"planner": model}}
        (tmp_path / "vlm.yaml").write_text(yaml.safe_dump(config))
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-m", "mmcof_gen.cli", "synthesize", "--images", str(images),
                               "--questions", str(tmp_path / "tasks.jsonl"), "--config", str(tmp_path / "vlm.yaml"),
                               "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 accepted (0 direct, 2 zoom), 0 rejected, 1 errors" in done.stdout
    trajectories = [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]
    assert sorted(t["view"]["resolution"] for t in trajectories) == [448, 672]
    for t in trajectories:
        assert [s["box"] for s in t["chain"]] == [frame_box(t["view"]["width"], t["view"]["height"])]
        assert t["provenance"]["models"]["planner"] == "openai:scripted-model"
    assert "outside" in (out / "errors.jsonl").read_text()
    stats = subprocess.run([sys.executable, "-m", "mmcof_gen.cli", "stats", str(out), "--json"], capture_output=True,
                           text=True, timeout=120)
    usage = json.loads(stats.stdout)["models"]
    assert usage["reader"]["calls"] == 4 and usage["planner"]["calls"] == 6  # targets, zoom, read per search
    assert usage["reader"]["retries"] + usage["planner"]["retries"] == 1
    assert usage["planner"]["cost_usd"] == pytest.approx(6 * (10 * 1.0 + 5 * 2.0) / 1e6)


@pytest.mark.parametrize("name", ["vllm-qwen2.5-vl", "vllm-qwen3-vl", "openai-api", "transformers-local"])
def test_ready_vlm_pipelines_load_with_the_agent_prompts(name):
    from mmcof_gen.config import load_config

    config = load_config(name)
    assert config.agent.kind == "vlm" and config.models.planner is not None
    assert {"planner", "planner_targets", "reader", "locator", "summary_zoom"} <= set(Prompts(config.prompts_dir).texts)


def test_a_configured_detector_plays_locator(tmp_path):
    from mmcof_gen.models.detector import DetectorConfig
    from mmcof_gen.models.detector_factory import detector
    from tests.support.tiny_models import build_tiny_owlv2

    owl = detector(DetectorConfig(backend="owlv2", model=str(build_tiny_owlv2(tmp_path / "owl")), box_threshold=0.0,
                                  max_detections=3))
    replies = {name: items for name, items in FULL_CHAIN.items() if name != "LocateReply"}
    with ScriptedServer(by_schema(replies)) as server:
        trajectory, frame = run_agent(server, detector=owl)
    assert trajectory.status == "accepted"
    locate = trajectory.steps[2]
    assert [c.role for c in locate.calls] == ["planner"]  # the detector answered, no locator call
    assert locate.detections == owl.detect([(frame, ["the small sign"])])[0]
    assert len(locate.detections) == 3


def sign_searcher(body: dict) -> Reply:
    """A stateless stand-in VLM for concurrent searches of the sign picture: every role, replies by schema."""
    name, messages = body["response_format"]["json_schema"]["name"], body["messages"]
    if name == "ReaderReply":
        return Reply(json.dumps({"answer": "red" if sent_images(body)[-1].width < 200 else "blue"}))
    if name == "Targets":
        return Reply('{"missing": ["the sign"]}')
    if name == "LocateReply":
        return Reply(json.dumps({"boxes": [EVIDENCE]}))
    if name == "Summary":
        count = int(re.search(r"\[(\d+) strings\]", json.dumps(messages)).group(1))
        return Reply(json.dumps({"thoughts": ["Closer."] * count, "final_thought": "It is red."}))
    steps = planner_steps(body)
    return [action(thought="Find it.", action="locate", phrase="the sign"),
            action(thought="Closer.", action="zoom", box=ZOOM),
            action(thought="Read it.", action="read", box=EVIDENCE)][min(steps, 2)]


def test_every_request_about_a_frame_starts_with_the_same_system_text_and_frame_across_roles_and_tasks(tmp_path):
    """Prefix-stable requests (docs/speed.md): the reader, target naming, planner steps, locator and summariser of
    every search on one frame send the same first tokens, so a prefix-caching server encodes the frame once; a
    conversation only appends (its crops after the frame); a crop is read after the same system text."""
    from mmcof_gen.tasks.sources import GivenQuestion, ImageUnit
    from mmcof_gen.worker import ImageWorker, Resumed

    picture().save(tmp_path / "sign.png")
    questions = ["What colour is the small sign?", "Which colour does the small sign have?"]
    unit = ImageUnit(tmp_path / "sign.png", "sign.png", [GivenQuestion(image="sign.png", question=q, answer="red",
                                                                       bbox=EVIDENCE) for q in questions], "q")
    with ScriptedServer(sign_searcher) as server:
        model = {"base_url": server.url, "model": "scripted-model", "max_retries": 0}
        config = PipelineConfig.model_validate({
            "resolutions": [448], "prompts_dir": resources.prompts("agent"), "agent": {"kind": "vlm"},
            "models": {"planner": model, "summariser": model}})
        with ImageWorker(config, PROMPTS, Provenance(package_version="0", config_hash="x")) as worker:
            records = list(worker.process(unit, Resumed()))
    assert sorted((r.task.question, r.status) for r in records if isinstance(r, Trajectory)) == sorted(
        (q, "accepted") for q in questions)
    system = {"role": "system", "content": PROMPTS.render("system")}
    frame_part = {"type": "image_url", "image_url": {"url": data_url(picture())}}  # the 448x336 picture is its frame
    about_frame = [r for r in server.requests if r["messages"][1]["content"][0] == frame_part]
    roles = {r["response_format"]["json_schema"]["name"] for r in about_frame}
    assert roles == {"ReaderReply", "Targets", "PlannerAction", "LocateReply", "Summary"}
    assert {q for r in about_frame for q in questions if q in json.dumps(r["messages"])} == set(questions)
    crop_reads = [r for r in server.requests if r not in about_frame]
    assert len(crop_reads) == 2 and all(sent_images(r)[0].width < 200 for r in crop_reads)
    assert all(r["messages"][0] == system for r in server.requests)
    for question in questions:  # each planner request is the one before it with turns (and crops) appended
        planner = [r["messages"] for r in about_frame if r["response_format"]["json_schema"]["name"] ==
                   "PlannerAction" and question in json.dumps(r["messages"])]
        assert len(planner) == 3 and all(later[:len(earlier)] == earlier
                                         for earlier, later in zip(planner, planner[1:]))
