"""The VLM path against a real vLLM OpenAI server (`make test-vllm` starts two: a tiny random-weight
Qwen2.5-VL and a tiny Qwen3-VL on 127.0.0.1, see tests/vllm/stage.sh). Random weights: these tests check the
protocol and the bookkeeping (every request answered, every call counted, every task ended with a reason) and
how each refusal of the server ends, never the answers. Skipped without a server (MMCOF_VLLM_URL unset; the
Qwen3-VL tests: MMCOF_VLLM_QWEN3_URL)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw
from pydantic import BaseModel, Field
from rich.console import Console

from mmcof_gen.agent import vlm_search
from mmcof_gen import resources
from mmcof_gen.config import PipelineConfig, load_config
from mmcof_gen.conventions import CONVENTIONS, read_box
from mmcof_gen.errors import ConfigError
from mmcof_gen.models.chat import ChatMessage, ChatModelConfig, ReplyError, chat_model, complete_json
from mmcof_gen.agent.servers import check_servers
from mmcof_gen.store import MANIFEST, RunStore
from mmcof_gen.synthesize import RunInputs, synthesize
from tests.support.proxy import RecordingProxy

URL = os.environ.get("MMCOF_VLLM_URL", "")
MODEL = os.environ.get("MMCOF_VLLM_MODEL", "")
LOG = Path(os.environ.get("MMCOF_VLLM_LOG", "/nonexistent"))
IMAGE_LIMIT = int(os.environ.get("MMCOF_VLLM_IMAGE_LIMIT", "6"))
MAX_MODEL_LEN = int(os.environ.get("MMCOF_VLLM_MAX_MODEL_LEN", "4096"))
CLI = [sys.executable, "-m", "mmcof_gen.cli"]
SHIPPED = resources.PIPELINES / "vllm-qwen2.5-vl.yaml"
QWEN3_URL = os.environ.get("MMCOF_VLLM_QWEN3_URL", "")
QWEN3_MODEL = os.environ.get("MMCOF_VLLM_QWEN3_MODEL", "")  # a name that does not tell the family
QWEN3_LOG = Path(os.environ.get("MMCOF_VLLM_QWEN3_LOG", "/nonexistent"))
QWEN3_SHIPPED = resources.PIPELINES / "vllm-qwen3-vl.yaml"

pytestmark = [pytest.mark.vllm, pytest.mark.skipif(not URL, reason="needs a vLLM server: run `make test-vllm`")]


class ServerLog:
    """The server's access log from the start of a test: the status of every request it answered."""

    LINE = re.compile(r'"(GET|POST) (\S+) HTTP/[\d.]+" (\d{3})')

    def __init__(self, log: Path = LOG):
        self.log = log
        self.start = log.stat().st_size

    def requests(self, expected: int | None = None) -> list[tuple[str, str, int]]:
        """(method, path, status) of each request since the start; with `expected`, waits (at most 10 s) for
        that many chat requests, since a line is written as the reply goes out, not before the client has it."""
        deadline = time.monotonic() + 10
        while True:
            with self.log.open("rb") as handle:
                handle.seek(self.start)
                text = handle.read().decode("utf-8", "replace")
            found = [(m[1], m[2], int(m[3])) for m in self.LINE.finditer(text)]
            if expected is None or len(self.chats(found)) >= expected or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    @staticmethod
    def chats(found: list[tuple[str, str, int]]) -> list[int]:
        return [status for method, path, status in found if path == "/v1/chat/completions"]


@pytest.fixture
def server_log() -> ServerLog:
    return ServerLog()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """Two images, one question each (answers a random model will not give)."""
    root = tmp_path_factory.mktemp("inputs")
    images = root / "images"
    images.mkdir()
    rows = []
    for index, colour in enumerate([(200, 40, 40), (40, 40, 200)]):
        image = Image.new("RGB", (800, 600), (120, 140, 160))
        ImageDraw.Draw(image).rectangle((600, 460, 660, 500), fill=colour)
        image.save(images / f"img{index}.png")
        rows.append({"image": f"img{index}.png", "question": "What is written on the small sign?",
                     "answer": f"zebra-{index}", "bbox": [600, 460, 660, 500]})
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return images, questions


def pipeline_data(structured: str = "response_format", shipped: Path = SHIPPED, url: str = URL, model: str = MODEL,
                  **agent) -> dict:
    """A shipped vLLM pipeline pointed at a test server: one resolution, short searches."""
    data = load_config(shipped).model_dump(mode="json")
    for role in ("planner", "reader", "locator"):
        data["models"][role].update(base_url=url, model=model, structured_output=structured, timeout=120,
                                    max_retries=2)
    data["resolutions"] = [448]
    data["agent"].update({"max_steps": 3, **agent})
    data["executor"]["workers"] = 1
    return data


def pipeline(structured: str = "response_format", **agent) -> PipelineConfig:
    return PipelineConfig.model_validate(pipeline_data(structured, **agent))


def run(config: PipelineConfig, images: Path, out: Path, **kwargs) -> dict:
    return synthesize(config, images, out, RunInputs(**kwargs), console=Console(file=io.StringIO()))


def all_calls(store: RunStore) -> list:
    calls = [call for t in store.trajectories() for step in t.steps for call in step.calls]
    return calls + [call for image in store.image_tasks() for call in image.calls]


def get_json(path: str, url: str = URL) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + path, timeout=10) as response:
        return json.loads(response.read())


# ------------------------------------------------------------------------------------------ the runs


@pytest.mark.parametrize("structured", ["response_format", "vllm"])
def test_synthesize_with_the_shipped_pipeline(structured, inputs, tmp_path, server_log):
    images, questions = inputs
    stats = run(pipeline(structured), images, tmp_path / "run", questions=questions)
    store = RunStore(tmp_path / "run")
    trajectories = list(store.trajectories())
    assert list(store.errors()) == []
    assert sorted(t.task.image for t in trajectories) == ["img0.png", "img1.png"]
    for trajectory in trajectories:
        assert trajectory.status in ("accepted", "rejected")
        assert trajectory.status == "accepted" or trajectory.reason
        if "Invalid JSON" in (trajectory.reason or ""):  # a cut reply is reported as cut, and not repaired
            assert "reply cut at 512 tokens (finish_reason length, agent.reply_tokens)" in trajectory.reason
    calls = all_calls(store)
    assert calls and all(c.retries == 0 and c.seconds > 0 and c.prompt_tokens > 0 and c.completion_tokens > 0
                         for c in calls)
    for role in {c.role for c in calls}:
        mine = [c for c in calls if c.role == role]
        assert stats["models"][role]["calls"] == len(mine)
        assert stats["models"][role]["prompt_tokens"] == sum(c.prompt_tokens for c in mine)
        assert stats["models"][role]["completion_tokens"] == sum(c.completion_tokens for c in mine)
        assert stats["models"][role]["retries"] == 0
        assert stats["models"][role]["seconds"] == pytest.approx(sum(c.seconds for c in mine), abs=1e-3)
    # every request answered 200: the recorded calls, and the one probe of the image limit before the run
    found = server_log.requests(expected=len(calls) + 1)
    assert ServerLog.chats(found) == [200] * (len(calls) + 1)
    assert all(status == 200 for _, _, status in found)
    # provenance: what the server said about itself
    manifest = json.loads((tmp_path / "run" / MANIFEST).read_text())
    assert manifest["servers"] == {URL: {"version": get_json("/version")["version"],
                                         "models": {MODEL: MAX_MODEL_LEN}}}


def test_vlm_task_synthesis_on_a_bare_folder(inputs, tmp_path, server_log):
    images, _ = inputs
    data = pipeline_data()
    data["tasks"].update(kind="vlm", max_per_image=2)
    data["tasks"]["synthesis"].update(tiles=1, max_proposals=2, proposal_resolution=448)
    stats = run(PipelineConfig.model_validate(data), images, tmp_path / "run", limit=1)
    store = RunStore(tmp_path / "run")
    (made,) = list(store.image_tasks())
    assert list(store.errors()) == []
    assert made.calls and made.calls[0].role == "task_writer"  # the proposal
    assert made.rejected and all(rejected.reason for rejected in made.rejected)
    assert stats["models"]["task_writer"]["calls"] == sum(c.role == "task_writer" for c in made.calls)
    calls = all_calls(store)
    assert ServerLog.chats(server_log.requests(expected=len(calls) + 1)) == [200] * (len(calls) + 1)


@pytest.mark.parametrize("baseline", [False, True], ids=["cof", "cof+no_zoom"])
def test_eval_against_the_endpoint(baseline, inputs, tmp_path, server_log):
    images, _ = inputs
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"image": str(images / "img0.png"), "question": "What colour is the small sign?",
                                 "options": ["red", "blue"], "answer": "A", "category": "colour"}) + "\n")
    out = tmp_path / "eval"
    done = subprocess.run([*CLI, "eval", "--bench", bench, "--out", out, "--endpoint", URL, "--served-model", MODEL,
                           "--resolutions", "224", *(["--baseline-no-zoom"] if baseline else [])],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    modes = ["cof", "no_zoom"] if baseline else ["cof"]
    assert sorted((r["resolution"], r["mode"]) for r in records) == sorted((r, m) for r in (224,) for m in modes)
    assert all(r["error"] is None and r["generations"] >= 1 for r in records)
    report = json.loads((out / "report.json").read_text())
    assert {row["mode"] for row in report["rows"]} == set(modes)
    assert (out / "report.png").stat().st_size > 0
    assert set(ServerLog.chats(server_log.requests())) == {200}


def test_eval_refuses_a_resolution_the_server_downsizes(inputs, tmp_path, server_log):
    """The tiny model's processor caps images at 224x224 pixels, so the server shrinks the R=448 frame
    (504x364, 234 patches of 28 px) to 54 image tokens: eval finds it by its probe and refuses that R."""
    images, _ = inputs
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"image": str(images / "img0.png"), "question": "What colour is the small sign?",
                                 "options": ["red", "blue"], "answer": "A", "category": "colour"}) + "\n")
    done = subprocess.run([*CLI, "eval", "--bench", bench, "--out", tmp_path / "eval", "--endpoint", URL,
                           "--served-model", MODEL, "--resolutions", "224,448"], capture_output=True, text=True,
                          timeout=600)
    assert "Traceback" not in done.stderr
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"mmcof-gen: --resolutions 448: openai:{MODEL} turns a 504x364 frame into 54 image tokens, not its 234: "
        f"the server downsizes it (vLLM: serve with --mm-processor-kwargs '{{\"max_pixels\": 14745600}}'), or drop 448; "
        "a model that is no Qwen2.5-VL student: pass --target")
    assert not (tmp_path / "eval" / "results.jsonl").exists()


def test_ray_makes_the_same_decisions_as_local(inputs, tmp_path):
    images, questions = inputs
    config = tmp_path / "ray.yaml"
    config.write_text(yaml.safe_dump(pipeline_data()), encoding="utf-8")
    decisions = {}
    for executor in ("local", "ray"):
        out = tmp_path / executor
        done = subprocess.run([*CLI, "synthesize", "--images", images, "--questions", questions, "--config", config,
                               "--out", out, "--executor", executor, "--workers", "2"],
                              capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        assert done.returncode == 0, done.stderr
        store = RunStore(out)
        assert list(store.errors()) == []
        decisions[executor] = {t.id: (t.status, t.reason, [s.action for s in t.steps]) for t in store.trajectories()}
    assert len(decisions["local"]) == 2
    assert decisions["ray"] == decisions["local"]


# ------------------------------------------------------------------------------------------ refusals


def test_too_many_images_is_found_before_the_run(inputs, tmp_path, server_log):
    images, questions = inputs
    with pytest.raises(ConfigError) as refused:  # the planner sees the frame and max_zooms crops
        run(pipeline(max_zooms=IMAGE_LIMIT), images, tmp_path / "run", questions=questions)
    message = str(refused.value)
    assert message.startswith(f"models.planner: {URL} refuses {IMAGE_LIMIT + 1} images in one request "
                              f"('At most {IMAGE_LIMIT} image(s) may be provided in one prompt.")
    assert f"--limit-mm-per-prompt '{{\"image\": {IMAGE_LIMIT + 1}}}'" in message and "agent.max_zooms" in message
    assert not (tmp_path / "run").exists()
    assert ServerLog.chats(server_log.requests(expected=1)) == [400]


def always_zoom(monkeypatch) -> None:
    """The planner's replies come from the server, but every action is a zoom (a planner that zooms until its
    conversation holds more images than the server takes)."""
    real = vlm_search.complete_json
    zooms = iter(range(1000))

    async def zooming(model, messages, schema, **kwargs):
        if schema is not vlm_search.PlannerAction:
            return await real(model, messages, schema, **kwargs)
        _, completions = await real(model, messages, vlm_search.ReaderReply, **kwargs)
        step = next(zooms) * 10
        return vlm_search.PlannerAction(thought="closer", action="zoom", box=[step, step, step + 100, step + 100]), \
            completions

    monkeypatch.setattr(vlm_search, "complete_json", zooming)


def test_too_many_images_in_the_run_stops_it_at_the_first_refusal(inputs, tmp_path, server_log, monkeypatch):
    images, questions = inputs
    monkeypatch.setattr("mmcof_gen.agent.vlm_search.check_servers", lambda config, wait_seconds=0.0: {})  # a server that does not say
    always_zoom(monkeypatch)
    config = pipeline(max_zooms=IMAGE_LIMIT, max_steps=IMAGE_LIMIT + 3)
    with pytest.raises(ConfigError) as stopped:
        run(config, images, tmp_path / "run", questions=questions, limit=1)
    message = str(stopped.value)
    assert message.startswith(f"the run stopped: {URL} ({MODEL}): HTTP 400: At most {IMAGE_LIMIT} image(s) may be "
                              f"provided in one prompt.")
    assert f"this request had {IMAGE_LIMIT + 1} images" in message
    assert f"--limit-mm-per-prompt '{{\"image\": {IMAGE_LIMIT + 1}}}'" in message and "agent.max_zooms" in message
    store = RunStore(tmp_path / "run")
    assert list(store.errors()) == [] and list(store.trajectories()) == []  # no error record per task
    assert ServerLog.chats(server_log.requests(expected=IMAGE_LIMIT + 3))[-1:] == [400]  # one 400, never retried
    assert ServerLog.chats(server_log.requests()).count(400) == 1


def test_a_prompt_over_the_context_is_not_retried_and_says_why(inputs, tmp_path, server_log):
    images, questions = inputs
    prompts = tmp_path / "prompts"
    shutil.copytree(resources.prompts("agent"), prompts)
    reader = prompts / "reader.txt"  # a reader prompt far longer than the server's context
    reader.write_text(" ".join(f"w{i}x" for i in range(8000)) + "\n" + reader.read_text(encoding="utf-8"))
    data = pipeline_data()
    data["prompts_dir"] = str(prompts)
    stats = run(PipelineConfig.model_validate(data), images, tmp_path / "run", questions=questions, limit=1)
    (error,) = list(RunStore(tmp_path / "run").errors())
    assert stats["errors"] == 1
    assert f"HTTP 400: This model's maximum context length is {MAX_MODEL_LEN} tokens" in error.reason
    assert "--max-model-len" in error.reason and "agent.max_steps" in error.reason
    assert ServerLog.chats(server_log.requests(expected=2)) == [200, 400]  # the probe; the first call, not retried


def test_reply_tokens_over_max_model_len_is_found_before_the_run(inputs, tmp_path, server_log):
    images, questions = inputs
    with pytest.raises(ConfigError, match=rf"^agent.reply_tokens \(5000\) must be below the max_model_len "
                                          rf"\({MAX_MODEL_LEN}\) of '{MODEL}' at {URL}"):
        run(pipeline(reply_tokens=5000), images, tmp_path / "run", questions=questions)
    assert ServerLog.chats(server_log.requests()) == []


def test_max_tokens_over_max_model_len_stops_the_run(inputs, tmp_path, server_log, monkeypatch):
    images, questions = inputs
    monkeypatch.setattr("mmcof_gen.agent.vlm_search.check_servers", lambda config, wait_seconds=0.0: {})
    with pytest.raises(ConfigError) as stopped:
        run(pipeline(reply_tokens=5000), images, tmp_path / "run", questions=questions)
    message = str(stopped.value)
    assert f"HTTP 400: max_tokens=5000 cannot be greater than max_model_len={MAX_MODEL_LEN}" in message
    assert "lower agent.reply_tokens" in message
    assert list(RunStore(tmp_path / "run").errors()) == []
    assert ServerLog.chats(server_log.requests(expected=1)).count(400) == 1


class LongText(BaseModel):
    text: str = Field(min_length=200, max_length=300)


def test_a_reply_cut_at_max_tokens_is_reported_and_not_repaired(server_log):
    model = chat_model(ChatModelConfig(base_url=URL, model=MODEL))
    with pytest.raises(ReplyError) as cut:
        import asyncio

        asyncio.run(complete_json(model, [ChatMessage("user", "Write a long text.")], LongText, max_tokens=16))
    assert str(cut.value).startswith("reply cut at 16 tokens (finish_reason length, agent.reply_tokens)")
    assert [c.completion_tokens for c in cut.value.completions] == [16]  # no repair attempt
    assert ServerLog.chats(server_log.requests(expected=1)) == [200]


def test_an_unknown_served_model_lists_the_served_names(inputs, tmp_path, server_log):
    images, questions = inputs
    config = tmp_path / "wrong.yaml"
    data = pipeline_data()
    data["models"]["planner"]["model"] = "Qwen/Qwen2.5-VL-7B-Instruct"
    config.write_text(yaml.safe_dump(data), encoding="utf-8")
    done = subprocess.run([*CLI, "synthesize", "--images", images, "--questions", questions, "--config", config,
                           "--out", tmp_path / "run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (f"mmcof-gen: models.planner.model: {URL} does not serve 'Qwen/Qwen2.5-VL-7B-Instruct'; "
                           f"its /v1/models offers: {MODEL}\n")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"image": str(images / "img0.png"), "question": "q?", "answer": "a"}) + "\n")
    done = subprocess.run([*CLI, "eval", "--bench", bench, "--out", tmp_path / "eval", "--endpoint", URL,
                           "--served-model", "nope"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == f"mmcof-gen: --served-model: {URL} does not serve 'nope'; its /v1/models offers: {MODEL}\n"
    assert ServerLog.chats(server_log.requests()) == []


def test_eval_sends_every_decoding_parameter_explicitly(inputs, tmp_path):
    images, _ = inputs
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"image": str(images / "img0.png"), "question": "What colour is the small sign?",
                                 "options": ["red", "blue"], "answer": "A", "category": "colour"}) + "\n")
    with RecordingProxy(URL) as proxy:
        done = subprocess.run([*CLI, "eval", "--bench", bench, "--out", tmp_path / "eval", "--endpoint", proxy.url,
                               "--served-model", MODEL, "--resolutions", "224"], capture_output=True, text=True,
                              timeout=600)
    assert done.returncode == 0, done.stderr
    episodes = [body for body in proxy.bodies if body["max_tokens"] == 512]  # the image-token probes ask for 1
    assert episodes and all(body["max_tokens"] == 1 for body in proxy.bodies if body not in episodes)
    assert {(b["temperature"], b["top_p"], b["repetition_penalty"]) for b in episodes} == {(0.0, 1.0, 1.0)}
    decoding = json.loads((tmp_path / "eval" / "report.json").read_text())["decoding"]
    assert (decoding["temperature"], decoding["top_p"], decoding["repetition_penalty"]) == (0.0, 1.0, 1.0)


# ------------------------------------------------------------------------------------------ a served Qwen3-VL

needs_qwen3 = pytest.mark.skipif(not QWEN3_URL, reason="needs the tiny Qwen3-VL server of `make test-vllm`")


def qwen3_pipeline(**agent) -> PipelineConfig:
    """The shipped vllm-qwen3-vl pipeline pointed at the tiny Qwen3-VL server, at two resolutions."""
    data = pipeline_data(shipped=QWEN3_SHIPPED, url=QWEN3_URL, model=QWEN3_MODEL, **agent)
    data["resolutions"] = [448, 672]
    return PipelineConfig.model_validate(data)


def one_question_bench(images: Path, path: Path) -> Path:
    path.write_text(json.dumps({"image": str(images / "img0.png"), "question": "What colour is the small sign?",
                                "options": ["red", "blue"], "answer": "A", "category": "colour"}) + "\n")
    return path


@needs_qwen3
@pytest.mark.parametrize("zooming", [False, True], ids=["as-served", "always-zoom"])
def test_the_qwen3_pipeline_runs_against_a_served_qwen3_with_no_request_refused(zooming, inputs, tmp_path,
                                                                               monkeypatch):
    """vllm-qwen3-vl against the tiny Qwen3-VL: every request (frames at two resolutions, and with a planner
    that always zooms, crops of each size a search makes) is answered 200, every task ends with a reason, and
    the zooms are the planner's 0-1000 boxes read as such."""
    images, questions = inputs
    log = ServerLog(QWEN3_LOG)
    if zooming:
        always_zoom(monkeypatch)
    config = qwen3_pipeline(max_steps=5) if zooming else qwen3_pipeline()
    assert {config.models.planner.box_convention.name, config.models.locator.box_convention.name} == {"rel1000"}
    run(config, images, tmp_path / "run", questions=questions)
    store = RunStore(tmp_path / "run")
    trajectories = list(store.trajectories())
    assert list(store.errors()) == []
    assert sorted((t.task.image, t.view.resolution) for t in trajectories) == [
        (image, r) for image in ("img0.png", "img1.png") for r in (448, 672)]
    assert all(t.status == "accepted" or t.reason for t in trajectories)
    calls = all_calls(store)
    assert calls and ServerLog.chats(log.requests(expected=len(calls) + 1)) == [200] * (len(calls) + 1)
    if zooming:  # always_zoom's boxes are [s, s, s + 100, s + 100] for s = 0, 10, 20, ...
        zooms = [(t.view, tuple(step.box)) for t in trajectories for step in t.steps
                 if step.action == "zoom" and step.box is not None]
        assert zooms, [(s.action, s.observation) for t in trajectories for s in t.steps]
        for view, box in zooms:
            relative = {tuple(read_box([s, s, s + 100, s + 100], CONVENTIONS["rel1000"], view.width, view.height))
                        for s in range(0, 900, 10)}
            assert box in relative, (view.width, view.height, box)


@needs_qwen3
def test_the_server_check_passes_for_the_served_qwen3():
    log = ServerLog(QWEN3_LOG)
    servers = check_servers(qwen3_pipeline())
    assert servers == {QWEN3_URL: {"version": get_json("/version", QWEN3_URL)["version"],
                                   "models": {QWEN3_MODEL: MAX_MODEL_LEN}}}
    assert ServerLog.chats(log.requests(expected=1)) == [200]  # the image-limit probe: the frame and max_zooms crops


@needs_qwen3
def test_eval_with_target_qwen3_runs_an_episode_against_the_served_qwen3(inputs, tmp_path):
    """The served name does not tell the family: `--target qwen3-vl` sends factor-32 frames the server keeps
    whole (32x32 pixels a token) and runs the episode; without it the Qwen2.5-VL frame (28x28 pixels a token)
    comes back with fewer tokens than its patches, and that R is refused."""
    images, _ = inputs
    bench = one_question_bench(images, tmp_path / "bench.jsonl")
    cli = [*CLI, "eval", "--bench", bench, "--endpoint", QWEN3_URL, "--served-model", QWEN3_MODEL, "--resolutions", "224"]
    log = ServerLog(QWEN3_LOG)
    done = subprocess.run([*cli, "--out", tmp_path / "eval", "--target", "qwen3-vl"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    (record,) = [json.loads(line) for line in (tmp_path / "eval" / "results.jsonl").read_text().splitlines()]
    assert record["error"] is None and record["generations"] >= 1 and record["frame_size"] == [320, 224]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["target"] == "qwen3-vl"
    assert report["image_tokens"] == {"224": {"frame": [320, 224], "tokens": 320 * 224 // (32 * 32)}}
    assert set(ServerLog.chats(log.requests())) == {200}
    refused = subprocess.run([*cli, "--out", tmp_path / "eval-default"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip().startswith(f"mmcof-gen: --resolutions 224: openai:{QWEN3_MODEL} turns a 252x168 "
                                             "frame into 40 image tokens, not its 54")
    assert refused.stderr.strip().endswith("a model that is no Qwen2.5-VL student: pass --target")
