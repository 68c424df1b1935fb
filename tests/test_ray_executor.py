"""The Ray executor on a real local Ray (2 CPUs, one session for the module): the same records as the local
executor, resume across executors, a killed actor, and detector actors that batch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image, ImageDraw, ImageFont

from mmcof_gen import resources
from mmcof_gen.config import PipelineConfig, load_config
from mmcof_gen.errors import ConfigError
from mmcof_gen.executors.detector_actors import ActorDetector, DetectorActor
from mmcof_gen.executors.ray import run_ray
from mmcof_gen.executors.sink import RecordSink
from mmcof_gen.imaging import make_frame
from mmcof_gen.models.chat import ChatModelConfig
from mmcof_gen.models.detector import DetectorConfig
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import ErrorRecord, ImageTasks, Provenance, Trajectory, trajectory_id
from mmcof_gen.store import RunStore
from mmcof_gen.synthesize import RunInputs, synthesize
from mmcof_gen.tasks.sources import ImageUnit, questions_source
from mmcof_gen.worker import WorkerFactory
from tests.support.scripted_server import Reply, ScriptedServer
from tests.support.tiny_models import build_tiny_owlv2

CLI = [sys.executable, "-m", "mmcof_gen.cli"]


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def text_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    for index, text in enumerate(["GATE 7", "CAFE 9", "EXIT 42B"]):
        image = Image.new("RGB", (900, 700), (120, 140, 160))
        draw = ImageDraw.Draw(image)
        draw.rectangle((40, 580, 360, 650), fill=(255, 255, 255))
        draw.text((52, 588), text, fill=(0, 0, 0), font=ImageFont.load_default(size=44))
        image.save(folder / f"img{index}.png")
    return folder


def offline_config(executor: str, workers: int = 1) -> PipelineConfig:
    config = load_config()
    config.resolutions = [448, 672]
    config.executor.kind = executor
    config.executor.workers = workers
    return config


def without_timing(trajectory: Trajectory) -> dict:
    """A record with its wall-clock fields zeroed: everything else must not depend on the executor."""
    data = trajectory.model_dump()
    for step in data["steps"]:
        step["seconds"] = 0.0
        for call in step["calls"]:
            call["seconds"] = call["gpu_seconds"] = 0.0
    return data


@pytest.fixture(scope="module")
def local_run(text_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    synthesize(offline_config("local"), text_images, out)
    return out


def test_ray_and_local_make_the_same_ids_and_the_same_accepted_records(text_images, local_run, tmp_path):
    synthesize(offline_config("ray", workers=2), text_images, tmp_path / "ray")
    local, distributed = RunStore(local_run), RunStore(tmp_path / "ray")
    shards = {path.name for path in (tmp_path / "ray").glob("*.jsonl")}
    assert shards == {"tasks-w0.jsonl", "tasks-w1.jsonl", "trajectories-w0.jsonl", "trajectories-w1.jsonl"}
    assert {t.id for t in distributed.trajectories()} == {t.id for t in local.trajectories()}
    accepted = {t.id: without_timing(t) for t in local.trajectories() if t.status == "accepted"}
    assert accepted and {t.id: without_timing(t) for t in distributed.trajectories()
                         if t.status == "accepted"} == accepted
    assert sorted(i.image for i in distributed.image_tasks()) == ["img0.png", "img1.png", "img2.png"]


def test_a_run_resumes_across_executors_with_every_record_once(text_images, local_run, tmp_path):
    out = tmp_path / "run"
    synthesize(offline_config("local"), text_images, out, RunInputs(limit=1))
    synthesize(offline_config("ray", workers=2), text_images, out, RunInputs(limit=2))
    stats = synthesize(offline_config("local"), text_images, out)
    store = RunStore(out)
    ids = [t.id for t in store.trajectories()] + [e.id for e in store.errors()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {t.id for t in RunStore(local_run).trajectories()}
    assert sorted(i.image for i in store.image_tasks()) == ["img0.png", "img1.png", "img2.png"]
    assert stats["accepted"] + stats["rejected"] == len(ids)


def test_two_copies_of_an_image_under_ray_are_written_once(text_images, local_run, tmp_path):
    """The same bytes at two paths make the same ids; the actors working on both at once write each id once."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("img0.png", "img1.png"):
        shutil.copy(text_images / name, images / name)
    shutil.copy(text_images / "img0.png", images / "copy-of-img0.png")
    synthesize(offline_config("ray", workers=2), images, tmp_path / "run")
    store = RunStore(tmp_path / "run")
    ids = [t.id for t in store.trajectories()] + [e.id for e in store.errors()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {t.id for t in RunStore(local_run).trajectories() if t.task.image in ("img0.png", "img1.png")}
    assert sorted(i.image for i in store.image_tasks()) == ["copy-of-img0.png", "img0.png", "img1.png"]


def test_images_are_pulled_from_the_source_only_as_slots_free_up(tmp_path):
    """Backpressure: with max_in_flight 8, the driver never holds more than 8 images it has not finished, over a
    stream of 2,000 (kept-out images: each is one record, no file read, so the test is about the driver)."""
    config = offline_config("ray", workers=2)
    config.executor.max_in_flight = 8
    pulled, finished, outstanding = [0], [0], []

    def stream():
        for index in range(2000):
            pulled[0] += 1
            outstanding.append(pulled[0] - finished[0])
            yield ImageUnit(tmp_path / f"{index}.jpg", f"{index}.jpg", skipped="on the exclusion list")

    class Counting(RecordSink):
        def written(self, record):
            finished[0] += 1
            super().written(record)

        write = written

    run_ray(stream(), WorkerFactory(config, Prompts(config.prompts_dir), Provenance(package_version="0", config_hash="x")),
            Counting(RunStore.open(tmp_path / "run", "x", {})))
    assert finished[0] == 2000 and max(outstanding) == 9  # 8 in flight, and the one just pulled for a free slot
    assert len(list(RunStore(tmp_path / "run").errors())) == 2000


def sign_picture() -> Image.Image:
    """448x336 noise with a red sign at [300, 200, 340, 230]."""
    pixels = np.random.default_rng(0).integers(0, 255, (336, 448, 3), dtype=np.uint8)
    pixels[200:230, 300:340] = (220, 20, 20)
    return Image.fromarray(pixels)


def vlm_config(server: ScriptedServer, **models) -> PipelineConfig:
    planner = ChatModelConfig(base_url=server.url, model="scripted-model", max_retries=0, timeout=30)
    return PipelineConfig.model_validate({
        "resolutions": [448], "prompts_dir": resources.prompts("agent"), "agent": {"kind": "vlm"},
        "executor": {"kind": "ray", "workers": 1}, "models": {"planner": planner, **models}})


def question_folder(tmp_path: Path, questions: list[dict]) -> tuple[Path, Path]:
    images = tmp_path / "images"
    images.mkdir()
    sign_picture().save(images / "sign.png")
    lines = tmp_path / "questions.jsonl"
    lines.write_text("".join(json.dumps({"image": "sign.png", **q}) + "\n" for q in questions))
    return images, lines


def run_records(config: PipelineConfig, images: Path, questions: Path, run_dir: Path, on_record=None) -> list:
    """run_ray into a run folder (as `synthesize` calls it); the records in the order the driver learns of them."""
    store = RunStore.open(run_dir, "x", {})
    records = []

    class Recording(RecordSink):
        def _count(self, record):
            records.append(record)
            if on_record:
                on_record(record)

    run_ray(questions_source(images, questions).units,
            WorkerFactory(config, Prompts(config.prompts_dir), Provenance(package_version="0", config_hash="x")),
            Recording(store))
    store.close()
    return records


def folder_records(run_dir: Path) -> list:
    store = RunStore(run_dir)
    return [*store.image_tasks(), *store.trajectories(), *store.errors()]


def reader_question(body: dict) -> str:
    return next(p["text"] for m in body["messages"] if isinstance(m["content"], list)
                for p in m["content"] if p["type"] == "text")


THREE_SEARCHES = [{"question": "What colour is the small sign?", "answer": "red"},
                  {"question": "What shape is the small sign?", "answer": "square"},
                  {"question": "What text is on the small sign?", "answer": "stop"}]


def three_searches(body: dict) -> Reply:
    """'colour' answers at once, 'shape' after 2 s, 'text' fails (HTTP 500)."""
    question = reader_question(body)
    if "colour" in question:
        return Reply('{"answer": "red"}')
    if "shape" in question:
        return Reply('{"answer": "square"}', delay=2)
    return Reply(status=500)


def test_a_killed_actor_is_restarted_and_its_image_finished_without_duplicates(tmp_path):
    """One image, three searches (`three_searches`). The actor is killed when the first trajectory arrives; the
    retry searches only what was not written."""
    images, questions = question_folder(tmp_path, THREE_SEARCHES)
    killed = []

    def kill_on_first_trajectory(record):
        if isinstance(record, Trajectory) and not killed:
            name = next(n for n in ray.util.list_named_actors() if n.startswith("mmcof-agent-"))
            ray.kill(ray.get_actor(name), no_restart=False)
            killed.append(record.task.question)

    with ScriptedServer(three_searches) as server:
        records = run_records(vlm_config(server), images, questions, tmp_path / "run", kill_on_first_trajectory)
    assert killed == ["What colour is the small sign?"]
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids))
    assert sorted(r.id for r in folder_records(tmp_path / "run")) == sorted(ids)
    assert [type(r).__name__ for r in records].count("ImageTasks") == 1
    trajectories = {r.task.question: (r.status, r.answer) for r in records if isinstance(r, Trajectory)}
    assert trajectories == {"What colour is the small sign?": ("accepted", "red"),
                            "What shape is the small sign?": ("accepted", "square")}
    errors = [r for r in records if isinstance(r, ErrorRecord)]
    assert [(e.stage, e.reason.split(":")[0]) for e in errors] == [("trajectory", "ChatError")]
    asked = [reader_question(body) for body in server.requests]
    assert sum("colour" in q for q in asked) == 1  # written before the kill: not searched again
    assert sum("shape" in q for q in asked) == 2   # in flight at the kill: searched once more


def test_what_a_dead_actor_wrote_but_never_streamed_is_not_searched_again(tmp_path):
    """The window between an actor's write and its stream: when the first trajectory arrives, the 'shape' record is
    planted in the actor's shard (as if written just before the kill) and the actor killed while its own 'shape'
    search still waits on the server. The driver reads it back from the shard: counted once, not searched again."""
    images, questions = question_folder(tmp_path, THREE_SEARCHES)
    run_dir = tmp_path / "run"
    planted = []

    def plant_then_kill(record):
        if isinstance(record, ImageTasks):
            planted.append(record)
        if isinstance(record, Trajectory) and len(planted) == 1:
            shape = next(task for task in planted[0].tasks if "shape" in task.question)
            planted.append(record.model_copy(update={"id": trajectory_id(shape.id, 448), "task": shape,
                                                     "answer": "square"}))
            with (run_dir / "trajectories-w0.jsonl").open("a") as shard:
                shard.write(planted[1].model_dump_json() + "\n")
            name = next(n for n in ray.util.list_named_actors() if n.startswith("mmcof-agent-"))
            ray.kill(ray.get_actor(name), no_restart=False)

    with ScriptedServer(three_searches) as server:
        records = run_records(vlm_config(server), images, questions, run_dir, plant_then_kill)
    ids = [r.id for r in records]
    assert len(ids) == len(set(ids)) == 4  # tasks, colour, shape (planted), text (an error)
    assert planted[1] in records
    assert sorted(r.id for r in folder_records(run_dir)) == sorted(ids)
    asked = [reader_question(body) for body in server.requests]
    assert sum("shape" in q for q in asked) == 1  # only the search the kill cut short


@pytest.fixture(scope="module")
def tiny_owl(tmp_path_factory) -> DetectorConfig:
    folder = build_tiny_owlv2(tmp_path_factory.mktemp("owl") / "owlv2")
    return DetectorConfig(backend="owlv2", model=str(folder), box_threshold=0.0, batch_size=4)


def test_detector_actor_batches_concurrent_requests_and_answers_like_the_model(tiny_owl):
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (96, 128, 3), dtype=np.uint8))
              for i in range(8)]
    requests = [(frame, ["a sign", "a car"][i % 2:]) for i, frame in enumerate(frames)]
    actor = ray.remote(DetectorActor).options(num_cpus=1).remote(tiny_owl, 2.0)
    try:
        answers = ActorDetector([actor], "owlv2:tiny").detect(requests)
        sizes = ray.get(actor.batch_sizes.remote())
    finally:
        ray.kill(actor)
    assert answers == detector(tiny_owl).detect(requests)
    assert sizes == [4, 4]


def test_a_detector_actor_given_a_gpu_loads_on_the_device_ray_shows_it(monkeypatch, tiny_owl):
    """Ray numbers an actor's GPUs from 0, so `cuda:1` in the config becomes `cuda` inside an actor given a GPU
    (no GPU here: the model builder records the device it is asked for)."""
    devices = []
    monkeypatch.setattr("mmcof_gen.executors.detector_actors.detector", lambda config: devices.append(config.device))
    DetectorActor(tiny_owl.model_copy(update={"device": "cuda:1"}), 0.005)  # this process holds no GPU: as given
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [1])
    DetectorActor(tiny_owl.model_copy(update={"device": "cuda:1"}), 0.005)
    DetectorActor(tiny_owl.model_copy(update={"device": "cpu"}), 0.005)
    assert devices == ["cuda:1", "cuda", "cpu"]


def test_vlm_locate_goes_through_the_shared_detector_actor(tmp_path, tiny_owl):
    evidence = [300, 200, 340, 230]
    script = {"ReaderReply": [Reply('{"answer": "blue"}'), Reply('{"answer": "red"}')],
              "Targets": [Reply('{"missing": ["the small sign"]}')],
              "PlannerAction": [Reply(json.dumps({"thought": "Find it.", "action": "locate", "phrase": "the small sign"})),
                                Reply(json.dumps({"thought": "Read it.", "action": "read", "box": evidence}))]}

    def reply(body: dict) -> Reply:
        queue = script[body["response_format"]["json_schema"]["name"]]
        return queue.pop(0) if queue else Reply(status=500)

    images, questions = question_folder(tmp_path, [{"question": "What colour is the small sign?", "answer": "red"}])
    with ScriptedServer(reply) as server:
        records = run_records(vlm_config(server, detector=tiny_owl.model_dump()), images, questions, tmp_path / "run")
    [trajectory] = [r for r in records if isinstance(r, Trajectory)]
    assert trajectory.status == "accepted" and [list(c.box) for c in trajectory.chain] == [evidence]
    locate = next(s for s in trajectory.steps if s.action == "locate" and s.arguments.get("phrase"))
    frame = make_frame(images / "sign.png", 448, 250_000_000)
    assert locate.detections == detector(tiny_owl).detect([(frame, ["the small sign"])])[0]
    assert isinstance(records[0], ImageTasks)


def test_the_cli_runs_on_a_local_ray_of_its_own(text_images, local_run, tmp_path):
    """`--executor ray` without an address starts a Ray for the run (this test process holds another one)."""
    result = subprocess.run([*CLI, "synthesize", "--images", str(text_images), "--out", str(tmp_path / "run"),
                             "--executor", "ray", "--workers", "2", "--max-in-flight", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stderr.splitlines() if line.startswith("done in"))
    made = list(RunStore(tmp_path / "run").trajectories())
    assert f": {len(made)} accepted, 0 rejected, 0 errors (0 resumed)" in summary
    at_local_resolutions = {t.id for t in made if t.view.resolution in (448, 672)}  # the CLI's config has four
    assert at_local_resolutions == {t.id for t in RunStore(local_run).trajectories()}


def test_ray_flags_without_executor_ray_are_one_line(tmp_path):
    result = subprocess.run([*CLI, "synthesize", "--images", str(tmp_path), "--out", str(tmp_path / "run"),
                             "--max-in-flight", "4"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "mmcof-gen: synthesize: --ray-address and --max-in-flight need --executor ray"


def test_workers_that_cannot_be_built_stop_the_run_with_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("MMCOF_TEST_MISSING_KEY", raising=False)
    images, questions = question_folder(tmp_path, [{"question": "What colour is the small sign?", "answer": "red"}])
    config = PipelineConfig.model_validate({
        "resolutions": [448], "prompts_dir": resources.prompts("agent"), "agent": {"kind": "vlm"},
        "executor": {"kind": "ray"}, "models": {"planner": {"model": "m", "api_key_env": "MMCOF_TEST_MISSING_KEY"}}})
    with pytest.raises(ConfigError, match="^the Ray workers could not be built: .*MMCOF_TEST_MISSING_KEY"):
        run_records(config, images, questions, tmp_path / "run")
