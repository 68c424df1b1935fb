"""The Ray executor: the same `ImageWorker` as the local executor, in agent actors across a cluster (the
contract: executors/sink.py).

    driver (this process) ──► at most max_in_flight images ──► AgentActor x workers ──locate──► DetectorActor x n
    streams units from the source,     what each wrote            threads, one ImageWorker     batches requests
    counts, retries a dead actor's     streams back (Ray          each; writes its own shard   (executors/detector_actors.py)
    images, writes its own errors      generators)                tasks|trajectories|errors-wN.jsonl

Who writes: each agent actor appends its records to its own shard of the run folder (`RunStore.open_shard`;
readers take every shard), then streams them to the driver, which only counts them. So the run folder
must be on a filesystem every node mounts at the same path (as the images already must be).

Exactly once, with several writers:
- a resumed run: the driver passes each image the ids already done (`worker.Resumed`, from the sink, which
  read every shard; ids are deterministic, so a run started local resumes with Ray and vice versa);
- a dead actor: the driver noted where the actor's shard ended when it sent the image, and reads back
  what was appended for that image since: records the actor wrote but did not live to stream count as
  done, and the image is sent once more for the rest. Before every send the driver waits until the actor
  answers (`ready`, in a concurrency group of its own so it never queues behind images): an actor Ray is
  still restarting is waited for (up to `executor.restart_timeout_s`), not taken for a second death; one
  dead for good (restarts spent) is passed over for another. Only an actor that dies again while it holds
  the image ends the image, in an error record that is transient (a resume tries it again). Ray may report
  an actor dead while its process still runs for a moment: each life of an actor holds a lock file
  (`.<shard>-<life>.lock`, released by the kernel when the process exits), and the driver reads the shard
  back only once it holds that lock, so nothing the old life writes can land after the read;
- two copies of one image (the same bytes at two paths make the same ids): an `IdLedger` actor gives
  each id to the first image that claims it, and an actor writes a record only when its image holds the id.

Configuration reaches the actors as the `PipelineConfig` object itself, inside the `WorkerFactory` (a
constructor argument), never through environment variables.
"""

from __future__ import annotations

import asyncio
import fcntl
import math
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from mmcof_gen import extras
from mmcof_gen.agent import agent_class
from mmcof_gen.config import PipelineConfig
from mmcof_gen.errors import ConfigError
from mmcof_gen.executors.sink import RecordSink
from mmcof_gen.models.chat import ServerLimitError
from mmcof_gen.schema import ErrorRecord, ImageTasks, Trajectory, trajectory_id
from mmcof_gen.store import RunStore
from mmcof_gen.tasks.sources import ImageUnit
from mmcof_gen.worker import Record, Resumed, WorkerFactory, image_error_id

try:
    import ray
    from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError, RayTaskError

    from mmcof_gen.executors.detector_actors import ActorDetector, DetectorActor
except ImportError:  # pragma: no cover - the [ray] extra is not installed
    ray = None


class IdLedger:
    """Which image each record id of this invocation belongs to: the first image that claims it. Calls run
    one at a time (a plain actor), so two actors claiming one id cannot both win."""

    def __init__(self):
        self._owners: dict[str, str] = {}

    def claim(self, image: str, record_id: str) -> bool:
        return self._owners.setdefault(record_id, image) == image


class AgentActor:
    """An agent worker: up to `max_concurrency` images at once (threads), all searches of all of them on the
    one event loop of its `ImageWorker`, sharing its model clients. Writes what it makes to its own shard
    of the run folder."""

    def __init__(self, make_worker: WorkerFactory, detectors: list[str], run_dir: Path, shard: str, ledger: str):
        """`detectors`, `ledger`: names of actors, looked up here (Ray warns that a restart may fail when
        constructor arguments live in the object store, as passed handles do)."""
        shared = (ActorDetector([ray.get_actor(name) for name in detectors], _detector_name(make_worker.config))
                  if detectors else None)
        self._worker = make_worker(shared_detector=shared)
        self._store = RunStore.open_shard(run_dir, shard)
        self._ledger = ray.get_actor(ledger)
        self._life = secrets.token_hex(4)
        self._lock = _life_lock(run_dir, shard, self._life).open("w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # held until this process exits, however it ends

    def ready(self) -> str:
        """This life of the actor, once built: the driver asks before it sends an image (a restarted actor answers
        only once rebuilt). In a group of its own, so the question never waits behind the images."""
        return self._life

    def process(self, unit: ImageUnit, resume: Resumed):
        """This life of the actor, then the records of one image, each written to this actor's shard and then
        streamed (a Ray generator)."""
        yield self._life
        for record in self._worker.process(unit, resume):
            if isinstance(record, (Trajectory, ErrorRecord)) and not ray.get(
                    self._ledger.claim.remote(unit.rel, record.id)):
                continue  # a copy of this image (the same bytes at another path) has it
            self._store.append(record)
            yield record


def run_ray(units: Iterable[ImageUnit], make_worker: WorkerFactory, sink: RecordSink) -> None:
    """Process every unit on Ray actors that write to their shards of the sink's run folder.

    The sink is told of every record an actor wrote, as it arrives (`written`), and given the records the
    driver makes itself (`write`: an image whose actor died twice). Joins the cluster at `executor.address`,
    or starts a local Ray with one CPU per actor (and stops it at the end) unless this process is already
    connected.
    """
    if ray is None:
        raise extras.missing("ray", "executor ray (or use --executor local)")
    config = make_worker.config
    run_dir = sink.run_dir
    settings = config.executor
    agent = agent_class(config.agent.kind)
    detecting = agent.detector(config) is not None
    detector_names = [f"mmcof-detector-{index}" for index in range(settings.detector_actors if detecting else 0)]
    started = _connect(settings.address, settings.workers + len(detector_names))
    run = secrets.token_hex(3)  # tells the actors of this run apart in `ray list actors`
    in_flight = settings.max_in_flight or (2 if agent.cpu_bound else 8) * settings.workers
    # a CPU-bound worker (OCR) takes one image at a time, the next ones wait queued in the actor
    concurrency = 1 if agent.cpu_bound else math.ceil(in_flight / settings.workers)
    shards = [f"w{index}" for index in range(settings.workers)]
    actors = []  # every actor of this run, killed at the end
    try:
        actors.append(ray.remote(IdLedger).options(name=f"mmcof-ledger-{run}", num_cpus=0,
                                                   max_restarts=settings.max_restarts).remote())
        for name in detector_names:
            actors.append(ray.remote(DetectorActor).options(
                name=f"{name}-{run}", num_cpus=1, num_gpus=_detector_gpus(config), max_restarts=settings.max_restarts,
                max_task_retries=-1).remote(config.models.detector, settings.detector_window_ms / 1000))
        agents = [ray.remote(concurrency_groups={"control": 1})(AgentActor).options(
            name=f"mmcof-agent-{index}-{run}", num_cpus=1, max_concurrency=concurrency,
            max_restarts=settings.max_restarts, max_task_retries=0,
        ).remote(make_worker, [f"{name}-{run}" for name in detector_names], Path(run_dir).resolve(), shard,
                 f"mmcof-ledger-{run}")
            for index, shard in enumerate(shards)]
        actors += agents
        _wait_until_built(actors[1:])  # the ledger holds nothing that could fail to build
        driver = _Driver(agents, shards, sink, config.resolutions, settings.restart_timeout_s)
        asyncio.run(driver.run(units, in_flight))
    finally:
        for actor in actors:
            ray.kill(actor)
        for shard in shards:
            for lock in Path(run_dir).glob(f".{shard}-*.lock"):
                lock.unlink(missing_ok=True)
        if started:
            ray.shutdown()


class _Driver:
    """Streams units to the least busy agent actor, at most `in_flight` at once, and counts what they write."""

    def __init__(self, agents: list, shards: list[str], sink: RecordSink, resolutions: list[int],
                 restart_timeout: float):
        self.agents = agents
        self.alive = set(range(len(agents)))  # less those found dead for good
        self.lives = [""] * len(agents)  # each agent's life that last answered `ready`
        self.restart_timeout = restart_timeout
        self.shard_names = shards
        self.shards = [RunStore(sink.run_dir, shard) for shard in shards]
        self.load = [0] * len(agents)
        self.sink = sink
        self.resolutions = resolutions

    async def run(self, units: Iterable[ImageUnit], in_flight: int) -> None:
        running: set[asyncio.Task] = set()
        for unit in units:  # pulled only when a slot frees up: a folder of 100k images is never listed up front
            if len(running) >= in_flight:
                finished, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    task.result()  # a failed write (disk full) stops the run
            running.add(asyncio.create_task(self._image(unit)))
        for task in asyncio.as_completed(running):
            await task

    async def _image(self, unit: ImageUnit) -> None:
        """One image, sent to a live actor; if that actor dies while it holds the image, what it wrote is kept
        and the image sent again for the rest. A second death on the image ends it (transient: a resume retries)."""
        self.sink.image_started()
        image = _Image(self.sink.tasks(unit.rel), self.sink)
        deaths = 0
        while True:
            index = await self._live_agent()
            if index is None:
                self.sink.write(_died(unit.rel, "every Ray agent actor is dead (restarts spent)"))
                break
            shard = self.shards[index]
            sizes = shard.sizes()
            life = self.lives[index]
            try:
                async for ref in self.agents[index].process.remote(unit, Resumed(image.tasks, self._done(image))):
                    record = await ref
                    if isinstance(record, str):
                        life = record  # the life that works on the image (it may have restarted since `ready`)
                    else:
                        image.take(record)
                break
            except (RayActorError, ObjectLostError) as exc:
                lock = _life_lock(shard.root, self.shard_names[index], life)
                await asyncio.to_thread(_wait_until_gone, lock, self.restart_timeout)
                for record in shard.records_since(sizes):  # written by the actor, never streamed: done
                    if _image_of(record) == unit.rel and record.id not in image.ids:
                        image.take(record)
                deaths += 1
                if deaths == 2:
                    self.sink.write(_died(unit.rel, f"worker died twice on this image: {type(exc).__name__}"))
                    break
            except RayTaskError as exc:  # an exception that escaped the worker: this image fails, the run goes on
                cause = exc.cause or exc
                if isinstance(cause, ServerLimitError):  # unless every request would hit it: the run stops
                    raise cause from None
                self.sink.write(ErrorRecord(id=image_error_id(unit.rel), stage="image", image=unit.rel,
                                       reason=f"{type(cause).__name__}: {cause}"))
                break
            finally:
                self.load[index] -= 1
        self.sink.image_finished()

    async def _live_agent(self) -> int | None:
        """The least busy agent actor that answers, its load counted for the caller (counted before the question,
        so that images asking at once spread); None when every one is dead for good."""
        while self.alive:
            index = min(self.alive, key=self.load.__getitem__)
            self.load[index] += 1
            if await self._answers(index):
                return index
            self.load[index] -= 1
            self.alive.discard(index)
        return None

    async def _answers(self, index: int) -> bool:
        """Whether agent `index` is up, waiting while Ray restarts it (up to the restart timeout). A restarting actor
        queues the call (`max_task_retries` carries it over the restart); one that Ray does not yet know
        is down answers ActorUnavailableError, and is asked again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.restart_timeout
        while True:
            try:
                self.lives[index] = await asyncio.wait_for(self.agents[index].ready.options(
                    concurrency_group="control", max_task_retries=-1).remote(), deadline - loop.time())
                return True
            except ActorUnavailableError:
                if loop.time() >= deadline:
                    return False
                await asyncio.sleep(0.05)
            except (RayActorError, TimeoutError):  # dead for good, or not back within the timeout
                return False

    def _done(self, image: _Image) -> frozenset[str]:
        """What the actor must not do again: the image's searches done in earlier runs (known only once its
        task list is) and every record written for it in this one."""
        if image.tasks is None:
            return frozenset(image.ids)
        ids = (trajectory_id(task.id, resolution) for task in image.tasks.tasks for resolution in self.resolutions)
        return self.sink.done_among(ids) | image.ids


class _Image:
    """What the driver knows of one image in flight: its task list and the ids written for it."""

    def __init__(self, tasks: ImageTasks | None, sink: RecordSink):
        self.tasks = tasks
        self.ids: set[str] = set()
        self._sink = sink

    def take(self, record: Record) -> None:
        if isinstance(record, ImageTasks):
            self.tasks = record
        self.ids.add(record.id)
        self._sink.written(record)


def _life_lock(run_dir: Path, shard: str, life: str) -> Path:
    return Path(run_dir) / f".{shard}-{life}.lock"


def _wait_until_gone(lock: Path, timeout: float) -> None:
    """Returns once no process holds `lock` (the life that held it has exited: all it wrote is on disk), or
    after `timeout` seconds (a process that hangs on is not waited for forever)."""
    deadline = time.monotonic() + timeout
    with lock.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return  # the file stays: the life still holds it
                time.sleep(0.01)
            else:
                lock.unlink()
                return


def _died(image: str, reason: str) -> ErrorRecord:
    return ErrorRecord(id=image_error_id(image), stage="image", image=image, reason=reason, transient=True)


def _image_of(record: Record) -> str:
    return record.task.image if isinstance(record, Trajectory) else record.image


def _connect(address: str | None, cpus: int) -> bool:
    """Connect this process to Ray; True when this call started a local Ray (to be shut down after)."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address)
            return False
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)  # "local": not a `ray start` cluster
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address} (--ray-address)" if address else "a local Ray"
        raise ConfigError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc}; "
                          "check `ray status` on the head node, or drop --ray-address to start a local Ray") from None
    return True


def _wait_until_built(actors: list) -> None:
    """An actor whose models cannot be built (a missing API key, a bad detector path) is one error line."""
    try:
        ray.get([actor.ready.remote() for actor in actors])
    except RayActorError as exc:
        reason = next((line for line in reversed(str(exc).splitlines()) if "Error" in line), str(exc))
        raise ConfigError(f"the Ray workers could not be built: {reason.strip()}") from None


def _detector_gpus(config: PipelineConfig) -> float:
    if config.executor.detector_gpus is not None:
        return config.executor.detector_gpus
    return 1 if config.models.detector.device.startswith("cuda") else 0


def _detector_name(config: PipelineConfig) -> str:
    return f"{config.models.detector.backend}:{config.models.detector.model}"
