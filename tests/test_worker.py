"""The image worker: one agent and its event loop per worker, closed cleanly, shared by several threads."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageDraw, ImageFont

from mmcof_gen import resources
from mmcof_gen.config import PipelineConfig
from mmcof_gen.models.ocr import OcrEngine
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Provenance, Trajectory
from mmcof_gen.tasks.sources import GivenQuestion, ImageUnit, folder_source
from mmcof_gen.worker import ImageWorker, Resumed
from tests.support.scripted_server import Reply, ScriptedServer
from tests.support.sign_model import action, picture, scripted_model

PROMPTS = Prompts(resources.prompts("agent"))


def test_a_closed_worker_is_collected_without_unclosed_connections_or_loop(tmp_path):
    """A worker owns an event loop and chat clients; collected after close(), nothing is left open or scheduled on
    a dead loop (dropped unclosed: unclosed-transport and -loop warnings, or "Event loop is closed" tracebacks when
    another loop ran the clients' cleanup)."""
    gc.collect()  # what earlier tests left unclosed is collected now, not below
    picture().resize((896, 672), Image.NEAREST).save(tmp_path / "sign.png")
    unit = ImageUnit(tmp_path / "sign.png", "sign.png", [GivenQuestion(
        image="sign.png", question="What colour is the small sign?", answer="red", bbox=[600, 400, 680, 460])], "q")
    with ScriptedServer(scripted_model()) as server:
        config = PipelineConfig.model_validate({
            "resolutions": [448], "prompts_dir": resources.prompts("agent"), "agent": {"kind": "vlm"},
            "models": {"planner": {"base_url": server.url, "model": "scripted-model", "backoff_seconds": 0.01}}})
        workers = [ImageWorker(config, PROMPTS, Provenance(package_version="0", config_hash="x"))]
        with workers[0] as worker:
            records = list(worker.process(unit, Resumed()))
        del worker
    assert [r.status for r in records if isinstance(r, Trajectory)] == ["accepted"]

    problems = []

    async def collect_while_another_loop_runs() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: problems.append(context))
        workers.clear()
        gc.collect()
        await asyncio.sleep(0.05)  # whatever the collection scheduled on this loop runs now

    hook, sys.unraisablehook = sys.unraisablehook, problems.append
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            asyncio.run(collect_while_another_loop_runs())
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert problems == []
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_one_worker_serves_images_from_several_threads_and_builds_its_ocr_engine_once(tmp_path, monkeypatch):
    """A Ray agent actor calls `process` from a thread per image: the searches share the worker's event loop, the
    OCR engine (text tasks of bare images) is built once, and the records are those of one image at a time."""
    built = []

    class CountedEngine(OcrEngine):
        def __init__(self, *args):
            built.append(args)
            super().__init__(*args)

    monkeypatch.setattr("mmcof_gen.worker.OcrEngine", CountedEngine)
    (tmp_path / "images").mkdir()
    for index, text in enumerate(["GATE 7", "CAFE 9", "EXIT 42B", "BUS 12"]):
        image = Image.new("RGB", (900, 700), (120, 140, 160))
        draw = ImageDraw.Draw(image)
        draw.rectangle((40, 580, 360, 650), fill=(255, 255, 255))
        draw.text((52, 588), text, fill=(0, 0, 0), font=ImageFont.load_default(size=44))
        image.save(tmp_path / "images" / f"img{index}.png")
    units = list(folder_source(tmp_path / "images").units)

    def unsure(body: dict) -> Reply:
        name = body["response_format"]["json_schema"]["name"]
        if name == "ReaderReply":
            return Reply('{"answer": "unsure"}')
        if name == "Targets":
            return Reply('{"missing": ["the text"]}')
        return action(thought="Done.", action="answer", answer="unsure")

    with ScriptedServer(unsure) as server:
        config = PipelineConfig.model_validate({
            "resolutions": [448], "prompts_dir": resources.prompts("agent"), "agent": {"kind": "vlm"},
            "models": {"planner": {"base_url": server.url, "model": "scripted-model"}}})
        provenance = Provenance(package_version="0", config_hash="x")
        with ImageWorker(config, PROMPTS, provenance) as worker, ThreadPoolExecutor(4) as threads:
            together = list(threads.map(lambda unit: list(worker.process(unit, Resumed())), units))
        assert len(built) == 1
        with ImageWorker(config, PROMPTS, provenance) as worker:
            alone = [list(worker.process(unit, Resumed())) for unit in units]

    def outcome(records: list) -> list:
        return sorted((r.id, getattr(r, "status", None)) for r in records)

    assert [outcome(records) for records in together] == [outcome(records) for records in alone]
    searched = [(len(records[0].tasks), sum(isinstance(r, Trajectory) for r in records)) for records in together]
    assert all(tasks == trajectories for tasks, trajectories in searched) and sum(t for t, _ in searched) >= 3
