"""Throughput of the Ray executor, each number a ratio against a baseline measured in the same run.

Run from the checkout: RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.bench_throughput [--quick]

1. Concurrency: the VLM agent against the scripted OpenAI-compatible server (its own process, every reply
   after a fixed 0.2 s). The script is stateless and makes every search take exactly 5 calls (reader from
   the frame: wrong; planner targets; planner zoom; planner read; reader from the crop: right), so each
   task has 1.0 s of model time. Tasks/s at 1, 8, 64, 256 images in flight (2 agent actors), speed-up
   against 1 in flight, and the orchestration overhead per task: (wall per task - model time) / wall per
   task, with wall per task = wall x in-flight / tasks, over the whole run (from the first image sent to
   the last record) and in steady state (from the end of the first round, when the first in-flight
   images are done: threads, connections and clients made, to the last record), and the mean time of a
   model call as the client saw it (0.2 s of it is the server's delay).
2. The offline default (RapidOCR agent, CPU-bound) on text images: Ray with 2 workers against the local
   executor with 1 worker, end to end through `synthesize` (actor start and model loading included; Ray
   itself is started once before).
3. Detector batching: detections/s of a detector actor (tiny OWLv2, batch size 8, 5 ms window) under 64
   concurrent single-request callers, against the same model called directly on batches of 8 in this
   process; one torch thread each, runs interleaved, best of each.

No asserts: the machine is shared and noisy; numbers go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import ray
import torch
from PIL import Image, ImageDraw, ImageFont

from mmcof_gen import resources
from mmcof_gen.config import PipelineConfig, load_config
from mmcof_gen.executors.detector_actors import ActorDetector, DetectorActor
from mmcof_gen.executors.ray import run_ray
from mmcof_gen.executors.sink import RecordSink
from mmcof_gen.models.chat import ChatModelConfig
from mmcof_gen.models.detector import DetectorConfig
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Provenance, Trajectory
from mmcof_gen.store import RunStore
from mmcof_gen.synthesize import synthesize
from mmcof_gen.tasks.sources import GivenQuestion, ImageUnit
from tests.support.scripted_server import Reply, ScriptedServer, planner_steps
from tests.support.tiny_models import build_tiny_owlv2
from mmcof_gen.worker import ImageWorker, Resumed, WorkerFactory

DELAY = 0.2
CALLS_PER_TASK = 5
FRAME = 224
EVIDENCE = [150, 150, 190, 180]
ZOOM = [120, 120, 220, 210]


# ------------------------------------------------------------------------------------------ 1. concurrency


def png_size(data_url: str) -> tuple[int, int]:
    """Width and height from a PNG data URL's IHDR chunk (the first 24 bytes), without decoding the image."""
    head = base64.b64decode(data_url.split(",", 1)[1][:32])
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def scripted_reply(body: dict) -> Reply:
    """Stateless: the reply depends only on the request, so any number of searches can run at once."""
    schema = body["response_format"]["json_schema"]["name"]
    if schema == "ReaderReply":
        url = next(p["image_url"]["url"] for m in body["messages"] if isinstance(m["content"], list)
                   for p in m["content"] if p["type"] == "image_url")
        answer = "blue" if png_size(url) == (FRAME, FRAME) else "red"  # the whole frame is misread, the crop not
        return Reply(json.dumps({"answer": answer}), delay=DELAY)
    if schema == "Targets":
        return Reply('{"missing": ["the red sign"]}', delay=DELAY)
    turns = planner_steps(body)
    action = ({"thought": "Look closer.", "action": "zoom", "box": ZOOM} if turns == 0 else
              {"thought": "Read it.", "action": "read", "box": EVIDENCE})
    return Reply(json.dumps(action), delay=DELAY)


def serve(urls) -> None:
    """The scripted server (deep backlog, TCP_NODELAY) in a process of its own, so its CPU is not the client's."""
    with ScriptedServer(scripted_reply) as server:
        urls.put(server.url)
        while True:
            time.sleep(3600)


class Clock:
    """Stands in for the live status: when the first image was sent and when each image finished."""

    def __init__(self):
        self.first = None
        self.finished: list[float] = []

    def image_started(self) -> None:
        self.first = self.first or time.perf_counter()

    def image_finished(self) -> None:
        self.finished.append(time.perf_counter())

    def overheads(self, in_flight: int, model: float) -> tuple[float, float, float]:
        """tasks/s over the whole run, and the overhead per task over the whole run and in steady state."""
        whole = len(self.finished) / (self.finished[-1] - self.first)
        steady = (len(self.finished) - in_flight) / (self.finished[-1] - self.finished[in_flight - 1])
        return whole, 1 - model * whole / in_flight, 1 - model * steady / in_flight


def concurrency(url: str, folder: Path, levels: list[int], rounds: int) -> None:
    image = Image.new("RGB", (FRAME, FRAME), (90, 110, 130))
    ImageDraw.Draw(image).rectangle([EVIDENCE[0], EVIDENCE[1], EVIDENCE[2] - 1, EVIDENCE[3] - 1], fill=(220, 20, 20))
    path = folder / "sign.png"
    image.save(path)
    planner = ChatModelConfig(base_url=url, model="scripted", max_retries=0, timeout=60, max_concurrency=256)
    model = CALLS_PER_TASK * DELAY
    print(f"1. VLM agent, scripted server with {DELAY:.1f} s per reply, {CALLS_PER_TASK} calls per task "
          f"(model time {model:.1f} s). ray: 2 agent actors, `rounds` x in-flight tasks; baseline: no Ray, one "
          "ImageWorker running in-flight searches on one event loop in this process")
    print(f"{'in flight':>9}  {'tasks':>5}  {'tasks/s':>7}  {'speed-up':>8}  {'overhead/task':>13}  "
          f"{'steady state':>12}  {'call (ms)':>9}  {'baseline overhead':>17}  {'ray/baseline tasks/s':>20}")
    first = None
    for in_flight in levels:
        config = PipelineConfig.model_validate({
            "resolutions": [FRAME], "prompts_dir": resources.prompts("agent"), "agent": {"kind": "vlm"},
            "executor": {"kind": "ray", "workers": 2, "max_in_flight": in_flight}, "models": {"planner": planner}})
        prompts, provenance = Prompts(config.prompts_dir), Provenance(package_version="0", config_hash="bench")
        count = max(8, rounds * in_flight)
        records, clock = [], Clock()
        run_dir = folder / f"run-{in_flight}"  # the actors write their shards there, as in a real run
        sink = RecordSink(RunStore.open(run_dir, "bench", {}), clock)
        sink.write = sink.written = records.append  # the actors wrote them; the benchmark only collects
        run_ray((unit(path, [i]) for i in range(count)), WorkerFactory(config, prompts, provenance), sink)
        check(records, count)
        rate, overhead, steady = clock.overheads(in_flight, model)
        first = first or rate
        calls = [call.seconds for r in records if isinstance(r, Trajectory) for step in r.steps for call in step.calls]

        with ImageWorker(config, prompts, provenance) as worker:
            list(worker.process(unit(path, [-1]), Resumed()))  # warm-up: the client and its connection
            start = time.perf_counter()
            records = list(worker.process(unit(path, range(in_flight)), Resumed()))
            baseline = time.perf_counter() - start
        check(records, in_flight)
        print(f"{in_flight:>9}  {count:>5}  {rate:>7.2f}  {rate / first:>7.1f}x  {overhead:>13.1%}  {steady:>12.1%}  "
              f"{1000 * statistics.mean(calls):>9.0f}  "
              f"{(baseline - model) / baseline:>17.1%}  {rate / (in_flight / baseline):>20.2f}")


def unit(path: Path, numbers) -> ImageUnit:
    """One image with a question per number (distinct questions make distinct task ids)."""
    return ImageUnit(path, f"u{min(numbers, default=0)}/sign.png", [
        GivenQuestion(image="sign.png", question=f"What colour is sign {i}?", answer="red", bbox=EVIDENCE)
        for i in numbers], "bench")


def check(records: list, count: int) -> None:
    done = [r for r in records if isinstance(r, Trajectory)]
    calls = {sum(len(s.calls) for s in t.steps) for t in done}
    if len(done) != count or calls != {CALLS_PER_TASK} or any(t.status != "accepted" for t in done):
        print(f"  (unexpected: {len(done)}/{count} trajectories, calls per task {calls})")


# ------------------------------------------------------------------------------------------ 2. offline default


def text_images(folder: Path, count: int) -> Path:
    words = ["GATE 7", "CAFE 9", "EXIT 42B", "BUS 12", "ROOM 5", "DOCK 3", "LANE 8", "SHOP 21"]
    for index in range(count):
        image = Image.new("RGB", (1200, 900), (120 + index * 5, 140, 160))
        draw = ImageDraw.Draw(image)
        draw.rectangle((40, 780, 360, 850), fill=(255, 255, 255))
        draw.text((52, 788), words[index % len(words)], fill=(0, 0, 0), font=ImageFont.load_default(size=44))
        image.save(folder / f"img{index}.png")
    return folder


def offline_default(folder: Path, count: int) -> None:
    (folder / "images").mkdir()
    images = text_images(folder / "images", count)
    walls = {}
    for kind, workers in (("local", 1), ("ray", 2)):
        config = load_config()
        config.executor.kind, config.executor.workers = kind, workers
        start = time.perf_counter()
        stats = synthesize(config, images, folder / f"run-{kind}")
        walls[kind] = time.perf_counter() - start
        print(f"   {kind} x{workers}: {walls[kind]:.1f} s for {count} images "
              f"({stats['accepted'] + stats['rejected'] + stats['errors']} tasks, {stats['accepted']} accepted)")
    print(f"   speed-up ray x2 / local x1: {walls['local'] / walls['ray']:.2f}x")


# ------------------------------------------------------------------------------------------ 3. detector batching


def detector_batching(folder: Path, requests_count: int, runs: int) -> None:
    config = DetectorConfig(backend="owlv2", model=str(build_tiny_owlv2(folder / "owlv2")), box_threshold=0.0,
                            batch_size=8)
    frames = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (336, 448, 3), dtype=np.uint8))
              for i in range(requests_count)]
    requests = [(frame, ["a red sign"]) for frame in frames]
    torch.set_num_threads(1)  # as in the actor (Ray sets OMP_NUM_THREADS=1 for num_cpus=1); on this shared
    direct = detector(config)  # 2-core machine 2 torch threads ran slower than 1
    actor = ray.remote(DetectorActor).options(num_cpus=1).remote(config, 0.005)
    proxy = ActorDetector([actor], "owlv2:tiny")
    direct_s, actor_s = [], []
    with ThreadPoolExecutor(64) as callers:
        direct.detect(requests[:8])  # warm-up both
        list(callers.map(lambda r: proxy.detect([r]), requests[:8]))
        for _ in range(runs):  # interleaved, best of each: the machine is shared
            direct_s.append(_timed(lambda: direct.detect(requests)))
            actor_s.append(_timed(lambda: list(callers.map(lambda r: proxy.detect([r]), requests))))
    direct_s, actor_s = min(direct_s), min(actor_s)
    sizes = ray.get(actor.batch_sizes.remote())
    ray.kill(actor)
    print(f"   direct, batches of 8: {requests_count / direct_s:.1f} detections/s")
    print(f"   actor, 64 concurrent callers: {requests_count / actor_s:.1f} detections/s "
          f"(mean batch {statistics.mean(sizes):.1f})")
    print(f"   ratio actor / direct: {direct_s / actor_s:.2f}")


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tasks per level (a smoke run)")
    parser.add_argument("--parts", default="1,2,3", help="which measurements, e.g. 1,3")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    urls = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(urls,), daemon=True)
    server.start()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "1" in parts:
                concurrency(urls.get(timeout=60), Path(tmp), [1, 8, 64, 256], rounds=2 if args.quick else 8)
            if "2" in parts:
                print("2. Offline default (RapidOCR), 4 resolutions")
                offline_default(Path(tmp), 4 if args.quick else 8)
            if "3" in parts:
                print("3. Detector actor batching (tiny OWLv2 on CPU, 448x336 frames)")
                detector_batching(Path(tmp), 64, 2 if args.quick else 3)
    finally:
        ray.shutdown()
        server.terminate()


if __name__ == "__main__":
    main()
