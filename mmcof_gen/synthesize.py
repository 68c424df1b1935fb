"""`mmcof-gen synthesize`: images (or questions) in, verified chain-of-focus trajectories out.

Reads top to bottom like the data flow: open the run folder (resuming what is there), stream the
work, run the agent on each image at every resolution, write each record as it is made, count.
"""

from __future__ import annotations

import itertools
import platform
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from rich.console import Console

from mmcof_gen import __version__
from mmcof_gen.agent import agent_class
from mmcof_gen.config import PipelineConfig
from mmcof_gen.errors import ConfigError
from mmcof_gen.executors import EXECUTORS
from mmcof_gen.executors.sink import RecordSink
from mmcof_gen.imaging import file_sha256
from mmcof_gen.models.chat import ServerLimitError
from mmcof_gen.progress import LiveStatus
from mmcof_gen.prompts import Prompts
from mmcof_gen.schema import Manifest, ManifestInputs, Provenance
from mmcof_gen.stats import run_stats
from mmcof_gen.store import RunStore, unwritable
from mmcof_gen.tasks import TASK_MAKERS
from mmcof_gen.tasks.coco import coco_source
from mmcof_gen.tasks.exclusion import load_exclusions, screen
from mmcof_gen.tasks.sources import WorkSource, folder_source, questions_source
from mmcof_gen.tasks.base import task_prompts
from mmcof_gen.tasks.vstar import is_vstar_folder, vstar_source
from mmcof_gen.worker import WorkerFactory


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "mmcof-gen": __version__}
    for name in ("pillow", "numpy", "pydantic", "rapidocr-onnxruntime", "onnxruntime", "openai", "transformers",
                 "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass(frozen=True)
class RunInputs:
    """What a synthesis reads besides the config and the images folder: a questions file or COCO annotations
    (at most one), or the folder itself as `kind` says (auto, folder or vstar); and at most how many images."""

    questions: Path | None = None
    coco: Path | None = None
    kind: str = "auto"
    limit: int | None = None

    def source_kind(self, images_dir: Path) -> str:
        """The one place the source kind is decided. auto: `questions` or `coco` when given, `vstar` when
        `images_dir` is in the V*-bench layout, else `folder` (bare images: tasks are synthesised, by OCR or
        by the model roles as `tasks.kind` says)."""
        if self.kind != "auto":
            return self.kind
        return ("questions" if self.questions else "coco" if self.coco
                else "vstar" if is_vstar_folder(images_dir) else "folder")


# The task sources by kind (`RunInputs.source_kind`): (config, images folder, inputs) -> the source.
SOURCES: dict[str, Callable[[PipelineConfig, Path, RunInputs], WorkSource]] = {
    "questions": lambda config, images, inputs: questions_source(images, inputs.questions,
                                                                 agent_class(config.agent.kind).cannot_search),
    "coco": lambda config, images, inputs: coco_source(images, inputs.coco, config.tasks),
    "vstar": lambda config, images, inputs: vstar_source(images),
    "folder": lambda config, images, inputs: folder_source(images),
}


def task_source(config: PipelineConfig, images_dir: Path, inputs: RunInputs = RunInputs()) -> tuple[str, WorkSource]:
    """Where the tasks come from (its kind, and the source), the units screened against `tasks.exclude` and
    for near-duplicates."""
    kind = inputs.source_kind(images_dir)
    source = SOURCES[kind](config, images_dir, inputs)
    tasks = config.tasks
    if tasks.exclude is not None or tasks.near_duplicate_distance is not None:
        max_pixels = config.images.max_pixels
        exclusions = (load_exclusions(tasks.exclude, "tasks.exclude", tasks.near_duplicate_distance is not None,
                                      max_pixels) if tasks.exclude is not None else None)
        source.units = screen(source.units, exclusions, tasks.near_duplicate_distance, max_pixels)
    return kind, source


def synthesize(config: PipelineConfig, images_dir: Path, out_dir: Path, inputs: RunInputs = RunInputs(), *,
               relocated: bool = False, console: Console | None = None, wait_for_servers: float = 0.0) -> dict:
    """Run (or resume) a synthesis into `out_dir`; returns the run's stats. `relocated`: the run's images
    folder moved to `images_dir` (checked against the image hashes the run recorded). `wait_for_servers`:
    seconds to wait for a model server that does not answer yet, before refusing the run."""
    console = console or Console(stderr=True)
    prompts = Prompts(config.prompts_dir)
    # the task prompts (text questions, or the vlm task writer's) are hashed whichever agent searches
    hashes = {**prompts.hashes, **{f"tasks/{name}": digest for name, digest in task_prompts(config).hashes.items()}}
    agent = agent_class(config.agent.kind)
    models = agent.models(config)
    if TASK_MAKERS[config.tasks.kind].model_roles:
        writer = config.models.task_writer or config.models.planner
        models = {**models, "task_writer": writer.name}
    fingerprint = config.fingerprint() + "-" + Prompts.combined_hash(hashes)
    provenance = Provenance(package_version=__version__, config_hash=fingerprint, models=models, prompts=hashes)
    servers = agent.check_servers(config, wait_for_servers)  # before any work
    source_kind, source = task_source(config, images_dir, inputs)
    questions, coco = inputs.questions, inputs.coco
    manifest = Manifest(
        tool="mmcof-gen", config=config.model_dump(mode="json"), prompts=hashes, models=models,
        versions=package_versions(),
        inputs=ManifestInputs(images=str(images_dir.resolve()), source=source_kind,
                              questions=str(questions.resolve()) if questions else None,
                              questions_sha256=file_sha256(questions) if questions else None,
                              coco=str(coco.resolve()) if coco else None,
                              coco_sha256=file_sha256(coco) if coco else None),
        servers=servers,
    )
    store = RunStore.open(out_dir, fingerprint, manifest, relocated)
    units = itertools.islice(source.units, inputs.limit) if inputs.limit else source.units
    status = LiveStatus(console)  # the number of images is known once the source has streamed them all
    sink = RecordSink(store, status)
    with status:
        try:
            for error in source.errors:
                sink.write(error)
            run = EXECUTORS[config.executor.kind].runner()  # imported now: Ray is the optional [ray] extra
            run(status.counted(units), WorkerFactory(config, prompts, provenance), sink)
            stats = run_stats(store)
            store.write_manifest(store.manifest().model_copy(update={"counts": stats}))
        except OSError as exc:
            raise unwritable(out_dir, exc) from None
        except ServerLimitError as exc:  # the first request over a server limit stops the run (models/chat.py)
            raise ConfigError(f"the run stopped: {exc}") from None
        finally:
            store.close()
    return stats
