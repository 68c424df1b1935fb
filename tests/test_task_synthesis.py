"""Task synthesis with model roles (tasks.kind vlm) against scripted replies over real HTTP on 127.0.0.1:
proposals in tiles, crop descriptions, written questions, the answerability and triviality checks."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mmcof_gen import resources
from mmcof_gen.config import (AgentConfig, ConsistencyConfig, DifficultyConfig, ModelsConfig, PipelineConfig,
                              TasksConfig, TaskSynthesisConfig, VerifyConfig)
from mmcof_gen.imaging import file_sha256, frame_size, load_image, make_frame
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Detection, ErrorRecord, ImageTasks, RejectedTask, Task, task_id
from mmcof_gen.store import read_jsonl
from mmcof_gen.synthesize import synthesize
from mmcof_gen.tasks.base import task_prompts
from mmcof_gen.tasks.vlm_writer import TaskWriter
from tests.support.runs import write_noise_image
from tests.support.scripted_server import Reply, ScriptedServer

SIZE = (1120, 784)            # tiles of 560x392, each shown to the proposer at 308x224 (proposal_resolution 280)
FRAME = frame_size(*SIZE, 448)  # the working frame at the largest R: 532x364
SIGN_Q = "What colour is the small sign in the top left part of the image?"
MUG_Q = "What is written on the mug in the bottom left part of the image?"
CAR_Q = "How many wheels of the blue car in the right part of the image can be seen?"

PROPOSALS = [  # one reply per tile, row by row; boxes in pixels of the 308x224 view of the tile
    {"objects": [{"name": "red sign", "box": [110, 44, 132, 66]}]},
    {"objects": []},
    {"objects": [{"name": "building", "box": [0, 0, 300, 220]}, {"name": "mug", "box": [44, 140, 66, 168]}]},
    {"objects": [{"name": "blue car", "box": [154, 4, 198, 32]}, {"name": "car", "box": [156, 6, 198, 32]},
                 {"name": "tree", "box": [300, 10, 320, 30]}]},
]
WRITTEN = {
    "red sign": {"question_type": "attribute", "question": SIGN_Q, "options": ["red", "green", "blue", "yellow"],
                 "answer": "red"},
    "mug": {"question_type": "text", "question": MUG_Q, "options": None, "answer": "COFFEE"},
    "blue car": {"question_type": "counting", "question": CAR_Q, "options": ["2", "3", "4", "5"], "answer": "4"},
}
READS = {  # question -> (answer from the crop, answer from the whole frame)
    SIGN_Q: ("red", "green"),
    MUG_Q: ("coffee", "CAFE"),
    CAR_Q: ("4", "4"),  # the whole frame answers it: trivial
}


def images_of(body: dict) -> list[Image.Image]:
    parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
    return [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1])))
            for p in parts if p["type"] == "image_url"]


def prompt_of(body: dict) -> str:
    """The text of the first user message (a repair request appends the model's reply and the problem)."""
    content = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return content if isinstance(content, str) else content[-1]["text"]


def script(written: dict = WRITTEN, reads: dict = READS):
    """Replies by role: proposals in arrival order (tiles are asked one by one), the rest by prompt content
    (candidates are written concurrently)."""
    queue = [json.dumps(p) for p in PROPOSALS]

    def answer(body: dict) -> Reply:
        schema, prompt = body["response_format"]["json_schema"]["name"], prompt_of(body)
        if schema == "Proposals":
            return Reply(queue.pop(0))
        name = next((n for n in WRITTEN if f'close-up of "{n}"' in prompt), None)
        if schema == "CropDescription":
            return Reply(json.dumps({"description": f"a {name}", "clear": True}))
        if schema == "WrittenQuestion":
            return Reply(json.dumps(written[name]))
        if schema == "ReaderReply":
            question = next(q for q in reads if q in prompt)
            whole = images_of(body)[0].size == FRAME
            return Reply(json.dumps({"answer": reads[question][whole]}))
        return Reply(status=400)  # the search itself is not scripted here
    return answer


def config(server: ScriptedServer) -> PipelineConfig:
    model = ChatModelConfig(base_url=server.url, model="scripted-model", max_retries=0, timeout=10)
    return PipelineConfig(resolutions=[448], prompts_dir=resources.prompts("agent"), agent=AgentConfig(kind="vlm"),
                          models=ModelsConfig(planner=model),
                          tasks=TasksConfig(kind="vlm", synthesis=TaskSynthesisConfig(tiles=2, proposal_resolution=280)))


@pytest.fixture()
def image(tmp_path) -> Path:
    return write_noise_image(tmp_path / "images" / "street.png", SIZE, 0)


def synthesize_tasks(server: ScriptedServer, path: Path, detector=None):
    pipeline = config(server)
    pipeline.tasks.synthesis.detector_phrases = ["red sign", "mug"]
    model = chat_model(pipeline.models.planner)
    writer = TaskWriter(model, model, detector, task_prompts(pipeline), Prompts(pipeline.prompts_dir), pipeline)
    truth = load_image(path, 10**9)
    frame = make_frame(path, 448, 10**9)
    return asyncio.run(writer.synthesize(truth, frame, SIZE, "street.png", file_sha256(path)))


def test_scripted_replies_make_exact_tasks_and_drop_a_trivial_one(image):
    with ScriptedServer(script()) as server:
        made = synthesize_tasks(server, image)
    sha = file_sha256(image)
    assert made.tasks == [
        Task(id=task_id(sha, SIGN_Q), image="street.png", image_sha256=sha, question=SIGN_Q,
             options=["red", "green", "yellow", "blue"], answer="red", gt_boxes=[(200, 77, 240, 116)],
             source="vlm-synthesis", question_type="attribute", position="top left"),
        Task(id=task_id(sha, MUG_Q), image="street.png", image_sha256=sha, question=MUG_Q, options=None,
             answer="COFFEE", gt_boxes=[(80, 637, 120, 686)], source="vlm-synthesis", question_type="text",
             position="bottom left"),
    ]
    assert made.rejected == [
        RejectedTask(object="tree", reason="proposer: box [300, 10, 320, 30] is outside the 308x224 image "
                                           "(x must be within 0..308, y within 0..224)"),
        RejectedTask(object="building", box=(0, 392, 546, 777),
                     reason="not small: 23.9% of the image (tasks.max_area_fraction 0.01)"),
        RejectedTask(object="car", box=(843, 402, 920, 448), reason="the same object as 'blue car' [840, 399, 920, 448]"),
        RejectedTask(object="blue car", box=(840, 399, 920, 448),
                     reason="trivial: the reader answers it from the whole frame at R=448 without a zoom ('4')"),
    ]
    # 4 proposal calls, then per candidate: describe, write, read the crop, read the whole frame
    assert [c.role for c in made.calls] == ["task_writer"] * 4 + ["task_writer", "task_writer", "task_reader",
                                                                   "task_reader"] * 3
    assert all((c.prompt_tokens, c.completion_tokens) == (10, 5) for c in made.calls)


class RecordingDetector:
    """Stands in for models.detector (its own backends are tested in test_detectors.py): answers per tile."""

    name = "recording"

    def __init__(self):
        self.requests = []

    def detect(self, requests):
        self.requests = [(frame.size, list(phrases)) for frame, phrases in requests]
        return [[Detection(box=(110, 44, 132, 66), score=0.9, label="red sign")], [], [], []]


def test_a_configured_detector_proposes_the_objects(image):
    detector = RecordingDetector()
    with ScriptedServer(script()) as server:
        made = synthesize_tasks(server, image, detector)
    assert detector.requests == [((308, 224), ["red sign", "mug"])] * 4
    assert [(t.question, t.gt_boxes) for t in made.tasks] == [(SIGN_Q, [(200, 77, 240, 116)])]
    assert all(r["response_format"]["json_schema"]["name"] != "Proposals" for r in server.requests)


def test_proposer_sees_each_tile_and_reader_sees_the_crop_then_the_frame(image):
    with ScriptedServer(script()) as server:
        synthesize_tasks(server, image)
    proposals = [r for r in server.requests if r["response_format"]["json_schema"]["name"] == "Proposals"]
    assert [images_of(r)[0].size for r in proposals] == [(308, 224)] * 4
    assert "shown at 308x224 pixels" in prompt_of(proposals[0])
    reads = [r for r in server.requests if r["response_format"]["json_schema"]["name"] == "ReaderReply"
             and SIGN_Q in prompt_of(r)]
    assert [images_of(r)[0].size != FRAME for r in reads] == [True, False]  # crop first, then the whole frame
    assert "(A) red\n(B) green\n(C) yellow\n(D) blue" in prompt_of(reads[0])
    # the frame is asked about as the search's reader asks: the agent's system text, then the frame
    system = Prompts(resources.prompts("agent")).render("system")
    assert [r["messages"][0] for r in reads] == [{"role": "system", "content": system}] * 2
    assert reads[1]["messages"][1]["content"][0]["type"] == "image_url"


def test_unanswerable_on_the_crop_and_malformed_replies_drop_only_that_proposal(image):
    written = {**WRITTEN, "mug": {"question_type": "attribute", "question": MUG_Q, "options": None, "answer": "x"}}
    with ScriptedServer(script(written, {**READS, SIGN_Q: ("blue", "green")})) as server:
        made = synthesize_tasks(server, image)
    assert made.tasks == []
    reasons = {r.object: r.reason for r in made.rejected}
    assert reasons["red sign"] == ("not answerable on the crop at R=448: the reader answered 'blue', expected 'red'")
    assert reasons["mug"] == ("task_writer: malformed reply after one repair attempt: reply: Value error, "
                              "attribute questions need options")


def test_synthesize_run_records_tasks_rejections_and_synthesis_cost(image, tmp_path):
    with ScriptedServer(script()) as server:
        stats = synthesize(config(server), image.parent, tmp_path / "run")
    record, = read_jsonl(tmp_path / "run" / "tasks.jsonl", ImageTasks)
    assert [t.question for t in record.tasks] == [SIGN_Q, MUG_Q]
    assert [r.object for r in record.rejected] == ["tree", "building", "car", "blue car"]
    assert stats["models"]["task_writer"]["calls"] == 10 and stats["models"]["task_reader"]["calls"] == 6
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["task_writer"] == "openai:scripted-model"
    assert set(manifest["prompts"]) >= {"tasks/propose", "tasks/describe", "tasks/write_question", "reader"}


def test_a_model_out_of_reach_fails_the_image_and_a_resume_tries_again(image, tmp_path):
    with ScriptedServer(lambda body: Reply(status=503)) as server:
        synthesize(config(server), image.parent, tmp_path / "run")
        error, = read_jsonl(tmp_path / "run" / "errors.jsonl", ErrorRecord)
    assert error.stage == "tasks" and error.reason.startswith("task synthesis: ChatError: ")
    assert not list(read_jsonl(tmp_path / "run" / "tasks.jsonl", ImageTasks))
    with ScriptedServer(script()) as server:
        synthesize(config(server), image.parent, tmp_path / "run")
    record, = read_jsonl(tmp_path / "run" / "tasks.jsonl", ImageTasks)
    assert [t.question for t in record.tasks] == [SIGN_Q, MUG_Q]


def test_task_synthesis_needs_the_vlm_agent():
    with pytest.raises(ValueError, match="tasks.kind vlm synthesises with the model roles: it needs agent.kind vlm"):
        PipelineConfig(tasks=TasksConfig(kind="vlm"))


def test_consistency_drops_a_question_the_readers_disagree_on_and_difficulty_one_a_small_model_answers(image, tmp_path):
    """verify.consistency: 4 answers of the reader and 4 of the second reader on the crop; verify.difficulty: 4 tries
    of the small model on the whole frame, 2 correct make it too easy."""
    crop_answers = {  # (model, question) -> answers on the crop, in turn
        ("scripted-model", SIGN_Q): ["red"] * 4, ("second-model", SIGN_Q): ["red", "red", "green", "red"],
        ("scripted-model", MUG_Q): ["coffee", "coffee", "CAFE", "coffee"], ("second-model", MUG_Q): ["CAFE"] * 4,
        ("scripted-model", CAR_Q): ["4"] * 4, ("second-model", CAR_Q): ["4"] * 4,
    }
    small_answers = {SIGN_Q: ["red", "red", "green", "red"], CAR_Q: ["4", "3", "5", "3"]}
    reads = {**READS, CAR_Q: ("4", "3")}  # the reader does not answer the car from the whole frame
    scripted = script(reads=reads)
    temperatures = []

    def answer(body: dict) -> Reply:
        if body["response_format"]["json_schema"]["name"] != "ReaderReply":
            return scripted(body)
        question = next(q for q in READS if q in prompt_of(body))
        whole = images_of(body)[0].size == FRAME
        if body["model"] == "small-model":
            assert whole
            return Reply(json.dumps({"answer": small_answers[question].pop(0)}))
        if whole:
            return scripted(body)
        temperatures.append(body["temperature"])
        return Reply(json.dumps({"answer": crop_answers[(body["model"], question)].pop(0)}))

    with ScriptedServer(answer) as server:
        pipeline = config(server)
        pipeline.models.second_reader = pipeline.models.planner.model_copy(update={"model": "second-model"})
        pipeline.models.small_reader = pipeline.models.planner.model_copy(update={"model": "small-model"})
        pipeline.verify = VerifyConfig(consistency=ConsistencyConfig(samples=4, temperature=0.7, min_agreement=0.75),
                                       difficulty=DifficultyConfig(tries=4, too_easy=2))
        stats = synthesize(pipeline, image.parent, tmp_path / "run")
    record, = read_jsonl(tmp_path / "run" / "tasks.jsonl", ImageTasks)
    assert [(t.question, t.answer, t.agreement, t.easy_tries) for t in record.tasks] == [(CAR_Q, "4", 1.0, (1, 4))]
    reasons = {r.object: r.reason for r in record.rejected}
    assert reasons["mug"] == ("readings disagree: 'CAFE' is 5 of 8 answers on the crop at R=448 "
                              "(agreement 0.62 < verify.consistency.min_agreement 0.75)")
    assert reasons["red sign"] == ("too easy: the small model answers it from the whole frame at R=448 in 3 of 4 "
                                   "tries (verify.difficulty.too_easy 2)")
    assert temperatures == [0.7] * 24 and all(not v for v in crop_answers.values())
    assert stats["tasks_dropped"] == {"readings disagree": 1, "too easy": 1, "proposer": 1, "not small": 1,
                                      "the same object as 'blue car' [840, 399, 920, 448]": 1}
    assert (stats["models"]["second_reader"]["calls"], stats["models"]["small_reader"]["calls"]) == (12, 8)


def test_difficulty_needs_a_small_reader():
    with pytest.raises(ValueError, match="verify.difficulty needs models.small_reader"):
        PipelineConfig(verify=VerifyConfig(difficulty=DifficultyConfig()))


def test_the_vllm_pipelines_commented_synthesis_and_verify_example_loads(tmp_path):
    """vllm-qwen2.5-vl.yaml shows tasks.kind vlm with verify.consistency and verify.difficulty as comments: with
    them uncommented it is a valid pipeline with those checks and their second and small readers."""
    from mmcof_gen.config import load_config

    text = (resources.PIPELINES / "vllm-qwen2.5-vl.yaml").read_text()
    example = text[text.index("# tasks:"):text.index("agent:")]
    text = text.replace(example, "".join(line[2:] + "\n" for line in example.splitlines()))
    for role in ("second_reader", "small_reader"):
        text = text.replace(f"  # {role}:", f"  {role}:")
    (tmp_path / "p.yaml").write_text(text)
    config = load_config(tmp_path / "p.yaml")
    assert config.tasks.kind == "vlm" and str(config.tasks.exclude) == "vstar_bench"
    assert config.verify == VerifyConfig(consistency=ConsistencyConfig(samples=8, temperature=0.7, min_agreement=0.75),
                                         difficulty=DifficultyConfig(tries=4, too_easy=2))
    assert (config.models.second_reader.model, config.models.second_reader.base_url) == (
        "OpenGVLab/InternVL3-8B", "http://localhost:8001/v1")
    assert config.models.small_reader.structured_output == config.models.planner.structured_output


@pytest.mark.parametrize("own_writer", [True, False], ids=["task-writer-set", "task-writer-defaults-to-planner"])
def test_no_image_reaches_a_text_only_planner_in_a_run_that_synthesises_tasks(image, tmp_path, own_writer):
    """tasks.kind vlm with a text-only planner: the task writer (a VLM) sees the image and the planner is sent
    words only; without models.task_writer the writer would be the planner, so the config is refused and no
    request reaches either server."""
    with ScriptedServer(script()) as seeing, ScriptedServer(lambda body: Reply(status=400)) as blind:
        vlm = ChatModelConfig(base_url=seeing.url, model="scripted-model", max_retries=0, timeout=10)
        text_only = vlm.model_copy(update={"base_url": blind.url, "vision": False})
        models = dict(planner=text_only, reader=vlm, locator=vlm, task_writer=vlm if own_writer else None)
        tasks = TasksConfig(kind="vlm", synthesis=TaskSynthesisConfig(tiles=2, proposal_resolution=280))
        if not own_writer:
            with pytest.raises(ValueError, match="models.planner has vision: false, but tasks.kind vlm makes it "
                                                 "the task writer, which must see the image: set "
                                                 r"models.task_writer \(a VLM\)"):
                PipelineConfig(resolutions=[448], agent=AgentConfig(kind="vlm"), models=ModelsConfig(**models),
                               tasks=tasks)
            assert seeing.requests == blind.requests == []
            return
        pipeline = PipelineConfig(resolutions=[448], agent=AgentConfig(kind="vlm"), models=ModelsConfig(**models),
                                  tasks=tasks)
        synthesize(pipeline, image.parent, tmp_path / "run")
    record, = read_jsonl(tmp_path / "run" / "tasks.jsonl", ImageTasks)
    assert [t.question for t in record.tasks] == [SIGN_Q, MUG_Q]  # written by the task writer, which saw
    assert blind.requests and not any(images_of(body) for body in blind.requests)
    assert {body["response_format"]["json_schema"]["name"] for body in blind.requests} == {"Targets"}
