"""A swappable part is one module plus one registration: a part defined here and registered in its
registry is usable from the CLI and the config with no other edit."""

import asyncio
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from mmcof_gen import cli
from mmcof_gen.agent import AGENTS, AgentKind
from mmcof_gen.agent.base import SearchResult
from mmcof_gen.config import PipelineConfig, load_config, require_extras
from mmcof_gen.errors import ConfigError
from mmcof_gen.export import FORMATS
from mmcof_gen.export.base import ExportFormat
from mmcof_gen.export.sharegpt import messages
from mmcof_gen.models.chat import ChatMessage, Completion, chat_model
from mmcof_gen.models.chat.config import CHAT_BACKENDS, ChatBackend
from mmcof_gen.models.detector import DETECTORS, DetectorBackend, DetectorConfig
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.schema import Detection, Task, Verdict, task_id
from mmcof_gen.tasks import TASK_MAKERS, TaskMakerKind
from mmcof_gen.tasks.base import image_tasks
from tests.support.runs import make_trajectory, write_noise_image, write_run


def lines_record(sample_id: str, sample_messages: list[dict], images: list) -> dict:
    """The test's own format: one line per sample, the question and the image count."""
    return {"id": sample_id, "question": sample_messages[1]["content"], "images": len(images)}


def test_an_export_format_registered_once_is_a_cli_choice(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    trajectory = make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150)])
    run = write_run(tmp_path / "run", images, [trajectory])
    card = tmp_path / "lines.md"
    card.write_text("Read it line by line.\n", encoding="utf-8")
    lines = ExportFormat(name="lines", data_file="lines.jsonl", messages=messages, record=lines_record, card=card)

    refused = CliRunner().invoke(cli.app, ["export", str(run), "--out", str(tmp_path / "no"), "--format", "lines"])
    assert refused.exit_code == 2 and "'lines' is not one of 'sharegpt'" in refused.output
    monkeypatch.setitem(FORMATS, "lines", lines)  # the one registration
    result = CliRunner().invoke(cli.app, ["export", str(run), "--out", str(tmp_path / "out"), "--format", "lines"])

    assert result.exit_code == 0, result.output
    assert "1 samples (0 direct, 1 zoom), 0 dropped" in result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "lines.jsonl").read_text().splitlines()]
    assert rows == [{"id": trajectory.id, "question": messages(trajectory, None)[1]["content"], "images": 2}]
    assert "Read it line by line." in (tmp_path / "out" / "README.md").read_text()
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 2


class FakeDetector:
    """The test's own detector backend: finds every phrase in the top left 10x10 pixels."""

    def __init__(self, config: DetectorConfig):
        self.name = config.name

    def detect(self, requests):
        return [[Detection(label=phrase, box=(0, 0, 10, 10), score=1.0) for phrase in phrases]
                for _, phrases in requests]


def registered_pipeline(path, text: str, refused: str, register) -> PipelineConfig:
    """The pipeline YAML `text` at `path`: refused with `refused` until `register()` (the one registration)
    makes the part it names a choice; then loaded, its extras checked (the part declares none)."""
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=refused):
        load_config(path)
    register()
    config = load_config(path)
    require_extras(config)
    return config


def test_a_detector_registered_once_is_a_config_choice(tmp_path, monkeypatch):
    config = registered_pipeline(
        tmp_path / "fake.yaml", "models:\n  detector: {backend: fake, model: tiny}\n",
        "Input should be 'grounding-dino', .* or 'rapidocr'",
        lambda: monkeypatch.setitem(DETECTORS, "fake", DetectorBackend(f"{__name__}:FakeDetector")))
    found = detector(config.models.detector)
    assert isinstance(found, FakeDetector) and found.name == "fake:tiny"
    assert found.detect([(Image.new("RGB", (64, 64)), ["sign"])]) == [[Detection(label="sign", box=(0, 0, 10, 10),
                                                                                  score=1.0)]]


class EchoChat:
    """The test's own chat backend: it replies with the last message's text (a `ChatModel`)."""

    def __init__(self, config):
        self.name = config.name

    async def complete(self, messages, *, max_tokens=512, temperature=0.0, json_schema=None) -> Completion:
        return Completion(text=messages[-1].text, model=self.name)

    async def aclose(self) -> None:
        """Nothing to release."""


def test_a_chat_backend_registered_once_is_a_config_choice(tmp_path, monkeypatch):
    config = registered_pipeline(
        tmp_path / "echo.yaml", "agent: {kind: vlm}\nmodels:\n  planner: {backend: echo, model: tiny}\n",
        "Input should be 'openai' or 'transformers'",
        lambda: monkeypatch.setitem(CHAT_BACKENDS, "echo", ChatBackend(f"{__name__}:EchoChat")))
    reply = asyncio.run(chat_model(config.models.planner).complete([ChatMessage("user", "hello")]))
    assert (reply.text, reply.model) == ("hello", "echo:tiny")  # EchoChat's reply, named by the config


class AnswerKeyAgent:
    """The test's own agent: it answers with the question's given answer, no zoom (a `SearchAgent`)."""

    cpu_bound = True

    def __init__(self, greeting: str):
        self.greeting = greeting

    @classmethod
    def build(cls, config, prompts, engine, shared_detector=None):
        return cls("built")

    @staticmethod
    def models(config) -> dict[str, str]:
        return {"planner": "answer-key"}

    @staticmethod
    def check_servers(config, wait_seconds: float = 0.0) -> dict[str, dict]:
        return {}

    @staticmethod
    def detector(config):
        return None

    @staticmethod
    def cannot_search(question) -> str | None:
        return None if question.answer else "it needs the answer"

    async def run(self, task, frame, view) -> SearchResult:
        verdict = Verdict(correct=True, predicted=task.answer, expected=task.answer, reason=self.greeting)
        return SearchResult(final_thought=f"The answer key says {task.answer}.", answer=task.answer, verdict=verdict,
                            accepted=True)

    async def aclose(self) -> None:
        pass


def test_an_agent_registered_once_is_a_config_choice(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    questions = tmp_path / "questions.jsonl"
    questions.write_text(json.dumps({"image": "a.png", "question": "What is written?", "answer": "EXIT"}) + "\n")
    pipeline = tmp_path / "key.yaml"
    pipeline.write_text("resolutions: [448]\nagent: {kind: answer-key}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="agent.kind: Input should be 'ocr' or 'vlm'"):
        load_config(pipeline)
    monkeypatch.setitem(AGENTS, "answer-key", AgentKind(f"{__name__}:AnswerKeyAgent", model_roles=False,
                                                         prompts="template"))  # the one registration

    result = CliRunner().invoke(cli.app, ["synthesize", "--images", str(images), "--questions", str(questions),
                                          "--config", str(pipeline), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert (record["status"], record["answer"], record["verdict"]["reason"]) == ("accepted", "EXIT", "built")
    assert record["provenance"]["models"] == {"planner": "answer-key"}


class OneQuestionMaker:
    """The test's own task maker: one question about every bare image, its answer given (a `TaskMaker`)."""

    @classmethod
    def build(cls, config, prompts, engine, agent, on_loop):
        return cls()

    def make(self, unit, sha256, size):
        task = Task(id=task_id(sha256, "What is shown?"), image=unit.rel, image_sha256=sha256,
                    question="What is shown?", answer="noise", source="one-question", question_type="object")
        return image_tasks(unit.rel, sha256, size, tasks=[task]), []

    def close(self) -> None:
        pass


def test_a_task_maker_registered_once_is_a_config_choice(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    pipeline = tmp_path / "one.yaml"
    pipeline.write_text("resolutions: [448]\nagent: {kind: answer-key}\ntasks: {kind: one-question}\n",
                        encoding="utf-8")
    monkeypatch.setitem(AGENTS, "answer-key", AgentKind(f"{__name__}:AnswerKeyAgent", model_roles=False,
                                                         prompts="template"))
    with pytest.raises(ConfigError, match="tasks.kind: Input should be 'ocr' or 'vlm'"):
        load_config(pipeline)
    monkeypatch.setitem(TASK_MAKERS, "one-question", TaskMakerKind(f"{__name__}:OneQuestionMaker",
                                                                   model_roles=False))  # the one registration

    result = CliRunner().invoke(cli.app, ["synthesize", "--images", str(images), "--config", str(pipeline),
                                          "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    [record] = [json.loads(line) for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()]
    assert (record["task"]["source"], record["status"], record["answer"]) == ("one-question", "accepted", "noise")
