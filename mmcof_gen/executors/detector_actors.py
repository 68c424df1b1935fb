"""Detector actors: the locator model held once (on a GPU where there is one) and shared by every agent.

Searches on many agent actors call `locate` at unrelated moments; one request per forward pass would
leave a GPU mostly idle. The actor queues requests and runs them `models.detector.batch_size` at a time,
waiting at most `executor.detector_window_ms` for a batch to fill. A batch runs in a thread, so requests
keep arriving (and form the next batch) while the model works.

    actors = [ray.remote(DetectorActor).options(num_gpus=1).remote(config.models.detector, 0.005)]
    proxy = ActorDetector(actors, "owlv2:google/owlv2-base-patch16-ensemble")   # a models.detector.Detector
    [[det, ...]] = proxy.detect([(frame, ["red car"])])
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence

import ray
from PIL import Image

from mmcof_gen.models.detector import DetectorConfig, DetectRequest
from mmcof_gen.models.detector_factory import detector
from mmcof_gen.schema import Detection


class DetectorActor:
    """An async Ray actor around one `models.detector.Detector`; `detect` answers one request, batched with others."""

    def __init__(self, config: DetectorConfig, window_seconds: float):
        if config.device.startswith("cuda:") and ray.get_gpu_ids():
            # Ray shows an actor only the GPUs it was given, numbered from 0: `cuda:1` would name one it cannot see
            config = config.model_copy(update={"device": "cuda"})
        self.detector = detector(config)
        self.batch_size = config.batch_size
        self.window_seconds = window_seconds
        self.batches: list[int] = []  # the size of every batch run, for tests and benchmarks
        self._queue: asyncio.Queue | None = None
        self._server: asyncio.Task | None = None

    async def detect(self, frame: Image.Image, phrases: list[str]) -> list[Detection]:
        if self._queue is None:  # the actor's event loop exists only once a method runs
            self._queue = asyncio.Queue()
            self._server = asyncio.create_task(self._serve())
        answer = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(((frame, phrases), answer))
        return await answer

    async def ready(self) -> None:
        """Returns once the model is loaded (the executor waits for it before starting)."""

    async def batch_sizes(self) -> list[int]:
        return list(self.batches)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_seconds
            while len(batch) < self.batch_size:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self.batches.append(len(batch))
            try:
                found = await asyncio.to_thread(self.detector.detect, [request for request, _ in batch])
            except Exception as exc:  # every caller of the batch gets the error; the actor goes on
                for _, answer in batch:
                    answer.set_exception(exc)
                continue
            for (_, answer), detections in zip(batch, found):
                answer.set_result(detections)


class ActorDetector:
    """A `models.detector.Detector` whose model lives in detector actors (requests spread round-robin).

    Safe to call from many threads at once (`concurrent`), which is what lets the actors batch the
    requests of concurrent searches.
    """

    concurrent = True

    def __init__(self, actors: Sequence[ray.actor.ActorHandle], name: str):
        self.actors = list(actors)
        self.name = name
        self._turn = itertools.count()

    def detect(self, requests: Sequence[DetectRequest]) -> list[list[Detection]]:
        refs = [self.actors[next(self._turn) % len(self.actors)].detect.remote(frame, list(phrases))
                for frame, phrases in requests]
        return ray.get(refs)
