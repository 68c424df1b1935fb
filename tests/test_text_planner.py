"""A planner without eyes (`vision: false`): text-only requests, the same chains as a seeing planner; and RapidOCR
as the VLM agent's locator and reader tools."""

from __future__ import annotations

import asyncio
import functools
import json
import re

import pytest
from PIL import Image, ImageDraw

from mmcof_gen import cof_format, resources
import tests.test_search_agent as search_module
from mmcof_gen.agent.vlm_search import PlannerAction, Roles, TextPlannerAction, VlmSearchAgent
from mmcof_gen.config import AgentConfig, PipelineConfig, load_config
from mmcof_gen.conventions import CONVENTIONS, write_box
from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import frame_from_image
from mmcof_gen.models.chat import ChatMessage, ChatModelConfig, chat_model
from mmcof_gen.models.detector import DetectorConfig
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.models.ocr import OcrReader, OcrReaderConfig, names_text
from mmcof_gen.schema import Task
from tests.support.scripted_server import ScriptedServer
from tests.support.sign_model import action
from tests.test_search_agent import FULL_CHAIN, PROMPTS, by_schema, make_view, run_agent

MODEL = {"backend": "openai", "model": "scripted-model"}


def schema_name(body: dict) -> str:
    return body["response_format"]["json_schema"]["name"]


def has_image(body: dict) -> bool:
    return any(isinstance(m["content"], list) and any(p["type"] == "image_url" for p in m["content"])
               for m in body["messages"])


def blind_run(server: ScriptedServer):
    """run_agent's search (the same picture, task and scripted reader and locator) with a text-only planner."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_module, "Roles", functools.partial(Roles, blind=frozenset({"planner"})))
        return run_agent(server)


def test_a_text_only_planner_sends_no_image_and_makes_the_seeing_planners_chain():
    with ScriptedServer(by_schema(FULL_CHAIN)) as server:
        seeing, _ = run_agent(server)
        seeing_requests = list(server.requests)
    with ScriptedServer(by_schema(FULL_CHAIN)) as server:
        text_only, _ = blind_run(server)
        requests = list(server.requests)

    planner = [r for r in requests if schema_name(r) in ("Targets", "PlannerAction")]
    assert len(planner) == 4 and not any(has_image(r) for r in planner)
    # the tools still see: the reader got the frame and the evidence crop, the locator the frame
    assert [has_image(r) for r in requests if schema_name(r) in ("ReaderReply", "LocateReply")] == [True] * 3
    assert sum(has_image(r) for r in seeing_requests if schema_name(r) == "PlannerAction") == 3
    # the text-only planner's replies are decoded to one schema variant per action; the seeing planner's as before
    assert planner[1]["response_format"]["json_schema"]["schema"] == TextPlannerAction.model_json_schema()
    assert [r["response_format"]["json_schema"]["schema"] for r in seeing_requests
            if schema_name(r) == "PlannerAction"] == [PlannerAction.model_json_schema()] * 3

    assert text_only.status == seeing.status == "accepted"
    assert text_only.chain == seeing.chain and text_only.final_thought == seeing.final_thought
    assert text_only.answer == seeing.answer == "red"
    assert [s.action for s in text_only.steps] == [s.action for s in seeing.steps]
    assert cof_format.trajectory_messages(text_only) == cof_format.trajectory_messages(seeing)

    # what the planner was told instead of shown: the frame size, detections, the zoom's size, reads with their box
    last = planner[-1]["messages"]
    assert last[0]["content"].startswith("You are the planner of a visual search. You cannot see the image: "
                                         "it is 448x336 pixels")
    # after naming the targets and the opening that says what the reader answered from the whole image
    assert [m["content"] for m in last if m["role"] == "user"][2:] == [
        "1 candidate(s) for 'the small sign': [300, 200, 340, 230] (1.00)",
        "zoomed into [260, 170, 380, 260], a region of 120x90 frame pixels; read a box to learn what it shows",
    ]
    # the target naming is the conversation's first turn, after the planner's instructions
    assert [m["role"] for m in planner[0]["messages"]] == ["system", "user"]
    assert planner[0]["messages"][0]["content"] == last[0]["content"]
    assert planner[0]["messages"][1]["content"].endswith(
        "You cannot see the image (448x336 pixels); a reader could not answer from the whole image at this "
        "resolution. Before searching, name what must be found: the objects or text the answer depends on (at most "
        '4, short noun phrases). Reply with a JSON object {"missing": ["...", ...]}.')


def test_a_text_only_planner_is_told_each_reading_with_its_box():
    script = dict(FULL_CHAIN, ReaderReply=[*FULL_CHAIN["ReaderReply"][:1], *FULL_CHAIN["ReaderReply"][:1],
                                           *FULL_CHAIN["ReaderReply"][1:]])
    script["PlannerAction"] = [FULL_CHAIN["PlannerAction"][0], FULL_CHAIN["PlannerAction"][2],
                               FULL_CHAIN["PlannerAction"][2]]
    with ScriptedServer(by_schema(script)) as server:
        trajectory, _ = blind_run(server)
        planner = [r for r in server.requests if schema_name(r) == "PlannerAction"]
    assert trajectory.status == "accepted" and [list(s.box) for s in trajectory.chain] == [[300, 200, 340, 230]]
    assert planner[-1]["messages"][-1]["content"] == (
        "read [300, 200, 340, 230]: the reader answered 'blue'; verifier: read 'blue', expected 'red'; the box "
        "holds the target; zoom in and read it closely")


def test_a_text_only_planner_is_told_every_box_in_its_own_convention():
    """A planner that writes 0-1000 boxes (Qwen3-VL's convention) is told the candidates, its zoom and its read in
    0-1000 too, never in the frame's pixels it does not know."""
    rel1000 = CONVENTIONS["rel1000"]
    shown = functools.partial(write_box, boxes=rel1000, width=448, height=336)
    zoom, evidence = shown(search_module.ZOOM), shown(search_module.EVIDENCE)
    script = dict(FULL_CHAIN, PlannerAction=[FULL_CHAIN["PlannerAction"][0],
                                             action(thought="Look closer around it.", action="zoom", box=zoom),
                                             action(thought="Read the sign.", action="read", box=evidence)])
    with ScriptedServer(by_schema(script)) as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(search_module, "Roles", functools.partial(Roles, blind=frozenset({"planner"}),
                                                                boxes={"planner": "rel1000"}))
        trajectory, _ = run_agent(server)
        planner = [r for r in server.requests if schema_name(r) == "PlannerAction"]
    assert trajectory.status == "accepted"
    told = [m["content"] for m in planner[-1]["messages"] if m["role"] == "user"][2:]
    assert zoom == [580, 505, 849, 774] and evidence == [669, 595, 759, 685]
    assert told[0] == f"1 candidate(s) for 'the small sign': {evidence} (1.00)"
    assert told[1].startswith(f"zoomed into {zoom}, a region of ")
    assert shown(trajectory.chain[-1].box) == evidence


def test_the_text_planners_schema_requires_each_actions_arguments():
    schema = TextPlannerAction.model_json_schema()
    assert schema["title"] == "PlannerAction"
    assert [(v["properties"]["action"]["const"], v["required"]) for v in schema["anyOf"]] == [
        ("locate", ["thought", "action", "phrase"]), ("read", ["thought", "action", "box"]),
        ("adjust", ["thought", "action", "box", "instruction"]),
        ("adjust", ["thought", "action", "box", "instruction", "direction"]),
        ("zoom", ["thought", "action", "box"]), ("answer", ["thought", "action", "answer"])]
    assert all(v["additionalProperties"] is False for v in schema["anyOf"])
    with pytest.raises(ValueError, match="action zoom needs box"):
        TextPlannerAction.model_validate({"thought": "t", "action": "zoom"})


def pipeline(**models) -> dict:
    return {"agent": {"kind": "vlm"}, "models": models}


@pytest.mark.parametrize("models, message", [
    ({"planner": {**MODEL, "vision": False}, "detector": {"backend": "rapidocr"}},
     "models.planner has vision: false, so it cannot read: set models.reader (a VLM, or {backend: rapidocr})"),
    ({"planner": {**MODEL, "vision": False}, "reader": {"backend": "rapidocr"}},
     "models.planner has vision: false, so it cannot locate: set models.detector (e.g. {backend: rapidocr} or "
     "grounding-dino) or models.locator (a VLM)"),
    ({"planner": MODEL, "reader": {**MODEL, "vision": False}},
     "models.reader has vision: false, but the reader must see the image; only the planner and the summariser "
     "may be text-only"),
])
def test_a_planner_without_eyes_needs_tools_that_see(tmp_path, models, message):
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(pipeline(**models)))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_vision_enters_the_fingerprint_only_when_off():
    seeing = PipelineConfig.model_validate(pipeline(planner=MODEL))
    assert ChatModelConfig(**MODEL).identity() == ChatModelConfig(**MODEL, vision=True).identity()
    assert "vision" not in ChatModelConfig(**MODEL).identity()
    blind = PipelineConfig.model_validate(pipeline(planner={**MODEL, "vision": False}, reader=MODEL, locator=MODEL))
    assert blind.fingerprint() != seeing.fingerprint()


def test_the_ocr_reader_takes_the_acuity_and_score_of_the_ocr_section():
    config = PipelineConfig.model_validate({**pipeline(planner=MODEL, reader={"backend": "rapidocr"}),
                                            "ocr": {"min_read_height": 14, "min_score": 0.6}})
    assert config.models.reader == OcrReaderConfig(backend="rapidocr", min_read_height=14, min_score=0.6)
    explicit = PipelineConfig.model_validate(pipeline(planner=MODEL, reader={"backend": "rapidocr",
                                                                              "min_read_height": 30}))
    assert explicit.models.reader.min_read_height == 30
    with pytest.raises(ValueError, match="tasks.kind vlm asks models.reader about crops in words"):
        PipelineConfig.model_validate({**pipeline(planner=MODEL, reader={"backend": "rapidocr"}),
                                       "tasks": {"kind": "vlm"}})


# ------------------------------------------------------------------------------------------ OCR tools


def signs() -> Image.Image:
    """A 1344x1008 white picture: a large "WELCOME" banner at the top and a small "EXIT 42" sign at the bottom right."""
    from mmcof_gen.scenes import _font

    image = Image.new("RGB", (1344, 1008), "white")
    draw = ImageDraw.Draw(image)
    draw.text((380, 90), "WELCOME", fill="black", font=_font(110))
    draw.text((1080, 880), "EXIT 42", fill="black", font=_font(30))
    return image


def test_names_text_by_what_is_written_or_by_asking_for_text():
    assert names_text("the small sign", "EXIT 42") and names_text("text in the bottom right", "x1")
    assert names_text("exit", "EXIT 42") and names_text("the EXIT 42 board", "EXIT 42")
    assert not names_text("a red car", "EXIT 42") and not names_text("welcome", "EXIT 42")


def test_rapidocr_locates_text_lines_and_reads_only_what_its_acuity_allows():
    image = signs()
    frame = frame_from_image(image, 448)  # 504x364: the small sign's line is 13 px tall, below the acuity of 20
    ocr = detector(DetectorConfig(backend="rapidocr", box_threshold=0.5))
    assert ocr.name == "rapidocr:PP-OCRv4"
    [exit_boxes, signs_found, cars] = ocr.detect([(frame, ["exit"]), (frame, ["sign"]), (frame, ["car"])])
    assert len(exit_boxes) == 1 and cars == []
    assert [d.label for d in signs_found] == ["sign", "sign"]
    assert exit_boxes[0].box in [d.box for d in signs_found]
    x1, y1, x2, y2 = exit_boxes[0].box
    assert 395 <= x1 < x2 <= 455 and 310 <= y1 < y2 <= 340

    reader = OcrReader(OcrReaderConfig(backend="rapidocr", min_read_height=20, min_score=0.5))
    whole = (0, 0, frame.width, frame.height)
    assert reader.read(frame, None, whole) == "WELCOME"  # the small sign is there but below the acuity
    assert reader.read(frame, None, (336, 242, 504, 364)) is None  # its cell: nothing legible
    padded = (x1 - 8, y1 - 6, x2 + 8, y2 + 6)
    assert reader.read(frame, padded, padded) == "EXIT42"  # the zoom magnifies it past the acuity


def test_an_ocr_reader_and_locator_serve_a_text_only_planner_to_a_verified_chain():
    """Only the planner is scripted: RapidOCR locates and reads the real pixels."""
    image = signs()
    frame = frame_from_image(image, 448)
    view = make_view(frame, image)
    task = Task(id="t2", image="signs.png", image_sha256="0" * 64, question="What does the small text in the bottom "
                "right part of the image say?", answer="EXIT 42", source="text", question_type="text",
                position="bottom right", gt_boxes=[(1080, 880, 1230, 920)])
    ocr_box = detector(DetectorConfig(backend="rapidocr", box_threshold=0.5)).detect([(frame, ["exit"])])[0][0].box
    x1, y1, x2, y2 = ocr_box
    read_box = [x1 - 8, y1 - 6, x2 + 8, y2 + 6]
    script = {"Targets": [json.dumps({"missing": ["the small text"]})],
              "PlannerAction": [json.dumps({"thought": "Find text.", "action": "locate", "phrase": "text"}),
                                json.dumps({"thought": "Read it.", "action": "read", "box": read_box})]}
    from tests.support.scripted_server import Reply

    with ScriptedServer(by_schema({k: [Reply(v) for v in vs] for k, vs in script.items()})) as server:
        config = PipelineConfig.model_validate(pipeline(
            planner={**MODEL, "base_url": server.url, "vision": False, "backoff_seconds": 0.01},
            reader={"backend": "rapidocr"}, detector={"backend": "rapidocr", "box_threshold": 0.5}))
        roles = Roles.build(config.models)
        result = asyncio.run(VlmSearchAgent(roles, PROMPTS, AgentConfig(kind="vlm")).run(task, frame, view))
        assert not any(has_image(r) for r in server.requests)
    assert result.accepted and result.answer == "EXIT42" and result.verdict.reason == "matches the ground truth"
    assert [list(c.box) for c in result.chain] == [read_box]
    assert result.steps[0].observation == "the reader answered None; verifier: no answer"
    assert [c.role for s in result.steps for c in s.calls] == ["planner"] * 3  # the tools make no model calls


def test_shipped_text_planner_pipelines_load():
    ocr = load_config("llm-planner-ocr")
    assert not ocr.models.planner.vision and ocr.models.reader.backend == "rapidocr"
    assert ocr.models.detector.backend == "rapidocr" and ocr.prompts_dir == resources.prompts("agent")
    mixed = load_config("llm-planner-vlm-tools")
    assert not mixed.models.planner.vision and mixed.models.reader.vision
    assert mixed.models.detector.backend == "grounding-dino"


def test_json_schema_is_sent_as_a_json_object_response_format_for_llama_cpp_servers():
    from mmcof_gen.agent.vlm_search import Targets
    from mmcof_gen.models.chat import complete_json
    from tests.support.scripted_server import Reply

    with ScriptedServer([Reply('{"missing": ["the sign"]}')]) as server:
        model = chat_model(ChatModelConfig(**MODEL, base_url=server.url, structured_output="json_object"))
        reply, _ = asyncio.run(complete_json(model, [ChatMessage("user", "Find?")], Targets))
    assert reply.missing == ["the sign"]
    assert server.requests[0]["response_format"] == {"type": "json_object", "schema": Targets.model_json_schema()}


def test_a_text_only_planner_gets_no_image_probe_before_a_run(monkeypatch):
    from mmcof_gen.agent.servers import check_servers
    from mmcof_gen.models import server_info

    probed = []
    monkeypatch.setattr(server_info, "reachable", lambda model: True)
    monkeypatch.setattr(server_info, "server_info", lambda model: {"version": "0.32.0", "models": {model.model: 4096}})
    monkeypatch.setattr(server_info, "check_images", lambda model, images, key: probed.append((key, images)))
    reader = {**MODEL, "base_url": "http://127.0.0.1:8000/v1"}
    config = PipelineConfig.model_validate(pipeline(planner={**MODEL, "base_url": "http://127.0.0.1:8001/v1",
                                                             "vision": False}, reader=reader, locator=reader))
    check_servers(config)
    assert probed == []  # the planner is sent text only; the reader and locator see one image per request
    seeing = PipelineConfig.model_validate(pipeline(planner=reader))
    check_servers(seeing)
    assert probed == [("models.planner", 4)]


# ------------------------------------------------------------------------------------------ choose action space


def sign_at(position: str) -> tuple[Image.Image, Task]:
    """A 1344x1008 picture with a large "WELCOME" banner and a small "EXIT 42" sign in the named corner, and the
    task that asks for the sign by its place."""
    from mmcof_gen.scenes import _font

    image = Image.new("RGB", (1344, 1008), "white")
    draw = ImageDraw.Draw(image)
    draw.text((380, 420), "WELCOME", fill="black", font=_font(110))
    x, y = {"bottom right": (1080, 880), "top left": (60, 60), "bottom left": (80, 900)}[position]
    draw.text((x, y), "EXIT 42", fill="black", font=_font(30))
    task = Task(id="t3", image="signs.png", image_sha256="0" * 64, question=f"What does the small text in the "
                f"{position} part of the image say?", answer="EXIT 42", source="text", question_type="text",
                position=position, gt_boxes=[(x, y, x + 150, y + 40)])
    return image, task


def choose_run(script, position: str = "bottom right", **agent):
    """Only the planner is scripted (a chooser); RapidOCR proposes, reads the real pixels and the verifier checks."""
    image, task = sign_at(position)
    frame = frame_from_image(image, 448)
    with ScriptedServer(script) as server:
        config = PipelineConfig.model_validate({**pipeline(
            planner={**MODEL, "base_url": server.url, "vision": False, "backoff_seconds": 0.01},
            reader={"backend": "rapidocr"}, detector={"backend": "rapidocr", "box_threshold": 0.5}),
            "agent": {"kind": "vlm", "planner_actions": "choose", "max_steps": 4, **agent}})
        roles = Roles.build(config.models)
        result = asyncio.run(VlmSearchAgent(roles, PROMPTS, config.agent).run(task, frame, make_view(frame, image)))
        return result, list(server.requests)


@pytest.mark.parametrize("position", ["bottom right", "top left", "bottom left"])
def test_a_chooser_that_reads_the_candidate_list_solves_the_zoom_task(position):
    from tests.support.choosers import options, reading_chooser

    result, requests = choose_run(reading_chooser, position)
    assert result.accepted and result.needs_zoom and result.answer == "EXIT42"
    assert result.verdict.reason == "matches the ground truth"
    # the chooser read the text line in the question's place; that padded line is the evidence the chain ends on
    [evidence] = result.chain
    x1, y1, x2, y2 = evidence.box
    assert result.steps[-2].action == "read" and result.steps[-2].box == evidence.box
    from mmcof_gen.positions import cell_named, cell_of

    assert cell_of(evidence.box, 504, 378) == cell_named(position) and x2 - x1 < 100 and y2 - y1 < 40
    # the planner was sent text only, a numbered list with places in words, and a schema of existing numbers
    assert not any(has_image(r) for r in requests)
    first = requests[0]["messages"][1]["content"]
    assert f"text line, {position} of the image" in first and f"region, the {position} ninth of the image" in first
    listed = [int(n) for n in re.findall(r"^(\d+)\. ", first, re.M)]
    assert options(requests[0])["read"] == listed and "answer" not in options(requests[0])
    # the chain's thought says what the chooser was shown and what it chose, in those terms
    assert evidence.thought.startswith(f"The tools proposed {len(listed)} candidate(s); I chose to read candidate ")
    number = result.steps[-2].arguments["candidate"]
    shown = dict(re.findall(r"^(\d+)\. (.+)$", requests[-1]["messages"][-1]["content"], re.M))
    assert evidence.thought.endswith(f"I chose to read candidate {number}: {shown[str(number)]}.")
    assert shown[str(number)].startswith(f"text line, {position} of the image, ")


def test_a_chooser_that_zooms_into_a_region_gets_the_lines_found_inside_it():
    from tests.support.choosers import listed, pick

    actions = iter(["zoom", "read"])

    def zoom_then_read(body):
        action = next(actions)
        candidates = listed(body)
        if action == "zoom":  # the bottom right region
            return pick(body, action, next(n for n, d in candidates.items() if "the bottom right ninth" in d))
        return pick(body, action, max(n for n, d in candidates.items() if ", inside " in d))  # found inside it

    result, requests = choose_run(zoom_then_read)
    assert result.accepted and result.answer == "EXIT42"
    assert [s.action for s in result.steps] == ["read", "locate", "zoom", "read", "answer"]
    zoom = result.steps[2]
    assert zoom.box == (336, 242, 504, 364) and "new candidate(s) inside it" in zoom.observation
    # the kept chain: the region, then the line read inside it, each with the chooser's thought
    assert [c.box for c in result.chain][0] == (336, 242, 504, 364) and len(result.chain) == 2
    assert "I chose to zoom candidate" in result.chain[0].thought
    assert "I chose to read candidate" in result.chain[1].thought and ", inside " in result.chain[1].thought


@pytest.mark.parametrize("chooser, reason", [
    ("far_chooser", "budget: 4 planner steps without a verified answer"),
    ("invalid_chooser", "planner: malformed reply after one repair attempt: reply: Value error, candidate 999 cannot be chosen"),
])
def test_a_chooser_that_picks_unhelpful_or_invalid_candidates_fails_the_task(chooser, reason):
    import tests.support.choosers as choosers

    result, _ = choose_run(getattr(choosers, chooser))
    assert not result.accepted and result.reason.startswith(reason)
    assert result.needs_zoom and result.chain == []


def test_the_choice_schema_bounds_every_reply_to_this_steps_options():
    from mmcof_gen.agent.candidates import choice_schema

    schema = choice_schema({"top": [1], "bottom left": [2, 4]}, {}, ["EXIT42"])
    variants = schema.model_json_schema()["anyOf"]
    assert [(v["properties"]["action"]["const"], v["required"]) for v in variants] == [
        ("read", ["action", "place", "candidate"]), ("read", ["action", "place", "candidate"]),
        ("locate", ["action", "phrase"]), ("answer", ["action", "answer"])]
    # a read names the place before the number; the numbers allowed are those of the candidates in that place
    assert variants[1]["properties"] == {"action": {"const": "read"}, "place": {"const": "bottom left"},
                                         "candidate": {"enum": [2, 4]}}
    assert list(variants[1]["properties"]) == ["action", "place", "candidate"]
    assert schema.model_validate_json('{"action": "read", "place": "bottom left", "candidate": 2}').candidate == 2
    for bad, message in [('{"place": "top", "action": "read", "candidate": 3}', "candidate 3 cannot be chosen to "
                                                                                "read in place 'top' now"),
                         ('{"place": "top", "action": "read", "candidate": 2}', "candidate 2 cannot be chosen to "
                                                                                "read in place 'top' now"),
                         ('{"action": "read", "candidate": 2}', "candidate 2 cannot be chosen to read in place None"),
                         ('{"place": "top", "action": "zoom", "candidate": 1}', "candidate 1 cannot be chosen to "
                                                                                "zoom in place 'top' now"),
                         ('{"action": "answer", "answer": "EXIT"}', "answer must be one of the readings so far"),
                         ('{"action": "locate"}', "action locate needs phrase")]:
        with pytest.raises(ValueError, match=message):
            schema.model_validate_json(bad)


def test_the_action_space_is_chosen_in_the_config_and_boxes_stay_the_default():
    assert AgentConfig().planner_actions == "boxes"
    assert load_config("llm-planner-ocr").agent.planner_actions == "boxes"
    assert load_config("llm-planner-choose").agent.planner_actions == "choose"  # the real-LLM stage's
    assert AgentConfig(planner_actions="choose").planner_actions == "choose"
    with pytest.raises(ValueError, match="planner_actions"):
        AgentConfig(planner_actions="pick")
