"""Pipeline configuration: pydantic models loaded from a pipeline YAML (a file, or the name of one shipped in
`mmcof_gen/resources/pipelines/`), overridable by CLI flags.

Everything a worker needs travels in one `PipelineConfig` object (never in environment variables),
so the local and the Ray executor see the same settings.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError,
                      field_validator, model_validator)

from mmcof_gen import extras, resources
from mmcof_gen.agent import AGENTS
from mmcof_gen.errors import ConfigError
from mmcof_gen.executors import EXECUTORS
from mmcof_gen.models.chat.config import CHAT_BACKENDS, ChatModelConfig, LimitAdvice
from mmcof_gen.models.detector import DETECTORS, DetectorConfig
from mmcof_gen.models.ocr_config import OcrReaderConfig
from mmcof_gen.schema import invalid_fields, one_of
from mmcof_gen.tasks import TASK_MAKERS

DEFAULT_CONFIG = resources.PIPELINES / "default.yaml"


MIN_SIDE, MAX_SIDE = 112, 3840  # the smallest and largest resolution budget R (Qwen's pixel bounds)


def valid_resolutions(value: list[int]) -> list[int]:
    """Resolution budgets R (synthesis and eval): sides between MIN_SIDE and MAX_SIDE, sorted, each once."""
    if not value or any(r < MIN_SIDE or r > MAX_SIDE for r in value):
        raise ValueError(f"resolutions must be a non-empty list of side lengths between {MIN_SIDE} and {MAX_SIDE}")
    return sorted(set(value))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagesConfig(Section):
    max_pixels: int = Field(250_000_000, gt=0, description="decompression-bomb guard: larger images are refused")
    truth_max_pixels: int = Field(4096 * 4096, gt=0, description="ground truth is read at most at this size")


class OcrConfig(Section):
    tile_size: int = Field(1536, ge=256, description="OCR runs on tiles of at most this side (its detector shrinks larger inputs)")
    tile_overlap: int = Field(192, ge=0)
    min_score: float = Field(0.5, ge=0, le=1, description="text hits below this score are ignored")
    min_read_height: int = Field(
        20, ge=1, description="the reader reads only text lines at least this tall in the image it is shown "
        "(the acuity of the VLM the data is for: Qwen2.5-VL sees 28-px tokens); smaller lines are only located")


class TextTasksConfig(Section):
    """Synthesis of text-reading questions from OCR at full resolution."""

    max_per_image: int = Field(4, ge=1)
    min_confidence: float = Field(0.9, ge=0, le=1)
    min_chars: int = Field(2, ge=1)
    max_chars: int = Field(24, ge=1)
    max_area_fraction: float = Field(0.01, gt=0, le=1, description="only text that is small relative to the image")
    cell_margin: float = Field(0.04, ge=0, lt=0.16, description="text centres this close to a grid line are ambiguous")


QuestionType = Literal["attribute", "position", "text", "counting"]


class TaskSynthesisConfig(Section):
    """Task synthesis with the model roles (tasks.kind vlm): propose small objects, describe each tight crop,
    write a question with ground truth, keep it only if it needs a zoom (tasks/vlm_writer.py)."""

    prompts_dir: Path | None = Field(None, description="templates propose/describe/write_question; relative to the "
                                                       "YAML file; none: the shipped prompts/tasks")
    question_types: list[QuestionType] = Field(default_factory=lambda: ["attribute", "position", "text", "counting"],
                                               min_length=1, description="what the writer may ask")
    tiles: int = Field(2, ge=1, le=4, description="the image is shown to the proposer as tiles x tiles parts")
    proposal_resolution: int = Field(1024, ge=112, le=3840, description="each part is shown at about this side")
    max_proposals: int = Field(8, ge=1, description="small objects per image that get a question written")
    detector_phrases: list[str] = Field(
        default_factory=lambda: ["sign", "text", "person", "car", "animal", "bottle", "clock", "bag", "flag", "logo"],
        min_length=1, description="with models.detector: what it looks for when proposing objects")
    num_options: int = Field(4, ge=2, le=6, description="options of a multiple-choice question")


class TasksConfig(TextTasksConfig):
    """Where tasks come from for a bare folder, and which images are kept out of the run."""

    kind: one_of(TASK_MAKERS) = Field(
        "ocr", description="a name of TASK_MAKERS: ocr: text questions from OCR at full resolution; "
                           "vlm: synthesis with models.task_writer (agent.kind vlm)")
    synthesis: TaskSynthesisConfig = Field(default_factory=TaskSynthesisConfig)
    exclude: Path | None = Field(None, description="exclusion list (sha256 / path / file name / stem / phash:<hex> "
                                                   "per line) or a folder of the excluded images; skipped at the source")
    near_duplicate_distance: int | None = Field(
        None, ge=0, le=32, description="an image whose perceptual hash is this close (Hamming bits of 64) to an "
        "excluded or an earlier image is skipped; none: off (needs imagehash, the data extra)")


class AgentConfig(Section):
    kind: one_of(AGENTS) = Field(
        "ocr", description="a name of AGENTS (agent/__init__.py): ocr: the offline RapidOCR agent; "
                           "vlm: the model roles of `models`")
    max_zooms: int = Field(3, ge=1, description="zooms per search, kept or not")
    target_padding: float = Field(0.15, ge=0, description="a located text box grows by this fraction per side before zooming")
    max_steps: int = Field(12, ge=1, description="vlm: planner actions per search")
    max_tokens: int = Field(60_000, ge=1, description="vlm: prompt + completion tokens per search, all roles")
    max_seconds: float = Field(600.0, gt=0, description="vlm: wall seconds per search")
    reply_tokens: int = Field(512, ge=16, description="vlm: max new tokens per model reply")
    planner_actions: Literal["boxes", "choose"] = Field(
        "boxes", description="vlm: boxes: the planner writes boxes; choose: it picks among numbered candidates the "
                             "tools propose (a small text LLM; agent/candidates.py)")


def _reader_kind(value) -> str:
    backend = value.get("backend") if isinstance(value, dict) else getattr(value, "backend", None)
    return "ocr" if backend == "rapidocr" else "chat"


# The pipeline's settings that bound a role's requests, as a refusal over a server limit names them
# (models/chat/refusals.py).
PIPELINE_LIMITS = LimitAdvice(images="agent.max_zooms (a search sends up to max_zooms + 2 images in one request)",
                              reply_tokens="agent.reply_tokens (the max_tokens of each reply)",
                              conversation="resolutions or agent.max_steps")


# A reader is a chat model or the OCR engine, told apart by `backend` (so a wrong field is reported once)
Reader = Annotated[Annotated[ChatModelConfig, Tag("chat")] | Annotated[OcrReaderConfig, Tag("ocr")],
                   Discriminator(_reader_kind)]


class ModelsConfig(Section):
    """Which model plays which role (agent.kind vlm). One endpoint may serve several roles."""

    planner: ChatModelConfig | None = Field(None, description="decides the next action; required for kind vlm")
    reader: Reader | None = Field(
        None, description="answers from a frame or crop: a model, or {backend: rapidocr}; default: the planner")
    locator: ChatModelConfig | None = Field(None, description="grounds a phrase to boxes when no detector is set; "
                                                               "default: the planner")
    detector: DetectorConfig | None = Field(None, description="open-vocabulary detector for locate (preferred)")
    verifier: ChatModelConfig | None = Field(None, description="LLM judge for open answers the rules reject; none: rules only")
    summariser: ChatModelConfig | None = Field(None, description="writes the chain's thoughts; none: templates")
    task_writer: ChatModelConfig | None = Field(None, description="tasks.kind vlm: proposes objects, describes crops, "
                                                                  "writes questions; default: the planner")
    second_reader: ChatModelConfig | None = Field(None, description="verify.consistency: a second model whose "
                                                                    "answers on the crop join the reader's votes")
    small_reader: ChatModelConfig | None = Field(None, description="verify.difficulty: the small model that must not "
                                                                   "answer a question from the whole frame")

    @model_validator(mode="after")
    def _advise_limits(self) -> ModelsConfig:
        """Each role's refusals over a server limit name the pipeline's settings that bound its requests."""
        for _, model in self:
            if isinstance(model, ChatModelConfig):
                model.advise(PIPELINE_LIMITS)
        return self


class ConsistencyConfig(Section):
    """tasks.kind vlm: a written question is kept only when the readers agree on its answer from the tight crop."""

    samples: int = Field(8, ge=1, description="answers of the reader (and as many of models.second_reader) on the crop")
    temperature: float = Field(0.7, gt=0, le=2, description="sampling temperature of those answers")
    min_agreement: float = Field(0.75, gt=0, le=1, description="share of all answers the majority must reach")


class DifficultyConfig(Section):
    """tasks.kind vlm: a question that models.small_reader answers from the whole frame (largest R) is too easy."""

    tries: int = Field(4, ge=1, description="answers of the small model on the whole frame")
    too_easy: int = Field(2, ge=1, description="this many correct answers drop the question")
    temperature: float = Field(0.7, ge=0, le=2)


class VerifyConfig(Section):
    """Extra checks of synthesised tasks (tasks.kind vlm); each off when none."""

    consistency: ConsistencyConfig | None = None
    difficulty: DifficultyConfig | None = None


class ExecutorConfig(Section):
    """Where the agents run. Not part of the run fingerprint: a run started local can be resumed with Ray."""

    kind: one_of(EXECUTORS) = Field("local", description="a name of EXECUTORS (executors/__init__.py)")
    workers: int = Field(1, ge=1, description="local: threads; ray: agent actors; each with its own models")
    address: str | None = Field(None, description="ray: 'auto' or ray://host:port joins a running cluster; "
                                                  "none starts a local Ray with one CPU per actor")
    max_in_flight: int | None = Field(None, ge=1, description="ray: images being worked on at once over all agent "
                                                              "actors; none: 2 per worker (ocr), 8 per worker (vlm)")
    max_restarts: int = Field(3, ge=0, description="ray: restarts of a dead agent actor (its unfinished images "
                                                   "are sent again; an image whose actor dies twice is retried on resume)")
    restart_timeout_s: float = Field(300.0, gt=0, description="ray: how long an image waits for its agent actor "
                                                              "to come back from a restart before going to another")
    detector_actors: int = Field(1, ge=1, description="ray: actors holding the models.detector model, shared by "
                                                      "every agent; each batches up to models.detector.batch_size")
    detector_gpus: float | None = Field(None, ge=0, description="ray: GPUs per detector actor; none: 1 when "
                                                                "models.detector.device is cuda, else 0")
    detector_window_ms: float = Field(5.0, ge=0, description="ray: a detector actor waits this long for more "
                                                             "requests before running a batch that is not full")
    ocr_threads: int | None = Field(None, ge=1, description="ONNX Runtime threads of each worker's OCR engine; none: "
                                                          "the worker's share of the CPUs (local: cores / workers; "
                                                          "ray: 1, the CPU its actor holds)")

    def ocr_threads_per_worker(self) -> int:
        """Workers that each spread over every core slow each other down: Ray x2 on 2 cores, 8 text images,
        took 14.5 s with one ONNX Runtime thread per actor and 21.4 to 22.9 s with two."""
        if self.ocr_threads:
            return self.ocr_threads
        return 1 if EXECUTORS[self.kind].one_cpu_per_worker else max(1, (os.cpu_count() or 1) // self.workers)


class FilterConfig(Section):
    """Rules of `mmcof-gen filter`, each on/off and parameterised. Filtering never changes synthesis, so
    this section is not part of the run fingerprint."""

    verified: bool = Field(True, description="keep only accepted trajectories whose answer matches the ground truth")
    format: bool = Field(True, description="tags balanced, one tool call per zoom turn, <image> count equals images")
    box_validity: bool = Field(True, description="every chain box lies inside the working frame")
    box_size: bool = True
    min_box_side: int = Field(8, ge=1, description="a zoom box narrower or shorter than this (frame px) is dropped")
    max_box_area_fraction: float = Field(0.9, gt=0, le=1, description="a zoom box covering more of the frame zooms nothing")
    chain_length: bool = True
    min_zooms: int = Field(0, ge=0)
    max_zooms: int = Field(5, ge=0, description="the CoF eval loop shows at most 6 images: the frame and 5 crops")
    reexecution: bool = Field(True, description="rebuild the frame and every crop with the crop function")
    min_evidence_overlap: float = Field(0.5, ge=0, le=1, description="fraction of a ground-truth box the last crop must cover")
    duplicate: bool = Field(True, description="same frame pixels + question is kept once")
    exclude_file: Path | None = Field(None, description="contamination list: one image sha256, file name or stem per line")
    balance: bool = Field(False, description="down-sample to direct_fraction per (R, question type)")
    direct_fraction: float = Field(0.5, ge=0, le=1, description="target share of direct samples in each group")
    seed: int = Field(0, description="seed of the balance down-sampling (deterministic)")


class PipelineConfig(Section):
    name: str = "default"
    resolutions: list[int] = Field(default_factory=lambda: [448, 672, 1024, 1920])
    prompts_dir: Path | None = Field(None, description="the agent's templates; relative to the YAML file; none: the "
                                                      "shipped prompts/template (agent.kind ocr) or prompts/agent (vlm)")
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    ocr: OcrConfig = Field(default_factory=OcrConfig)
    tasks: TasksConfig = Field(default_factory=TasksConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    # the YAML file it was read from (None: built in code); its header names the commands that start its servers
    _file: Path | None = PrivateAttr(None)

    @field_validator("resolutions")
    @classmethod
    def _valid_resolutions(cls, value: list[int]) -> list[int]:
        return valid_resolutions(value)

    @model_validator(mode="after")
    def _vlm_has_a_planner(self) -> PipelineConfig:
        agent = AGENTS[self.agent.kind]
        if agent.model_roles and self.models.planner is None:
            raise ValueError(f"agent.kind {self.agent.kind} needs models.planner (a ChatModelConfig); see "
                             "`mmcof-gen pipelines --show vllm-qwen2.5-vl`")
        if TASK_MAKERS[self.tasks.kind].model_roles and not agent.model_roles:
            raise ValueError(f"tasks.kind {self.tasks.kind} synthesises with the model roles: it needs agent.kind vlm")
        self._roles_that_see()
        if self.verify.difficulty is not None and self.models.small_reader is None:
            raise ValueError("verify.difficulty needs models.small_reader (a ChatModelConfig of the small model)")
        if self.prompts_dir is None:
            self.prompts_dir = resources.prompts(agent.prompts)
        return self

    def _roles_that_see(self) -> None:
        """A text-only planner (`vision: false`) leaves all seeing to tools: the reader, the locator and (tasks.kind
        vlm) the task writer must see. The OCR reader's unset acuity and score are those of the `ocr` section."""
        models = self.models
        if isinstance(models.reader, OcrReaderConfig):
            if models.reader.min_read_height is None:
                models.reader.min_read_height = self.ocr.min_read_height
            if models.reader.min_score is None:
                models.reader.min_score = self.ocr.min_score
            if TASK_MAKERS[self.tasks.kind].model_roles:
                raise ValueError("tasks.kind vlm asks models.reader about crops in words: it needs a chat model "
                                 "as reader, not rapidocr")
        for role in ("reader", "locator", "task_writer", "second_reader", "small_reader"):
            model = getattr(models, role)
            if isinstance(model, ChatModelConfig) and not model.vision:
                raise ValueError(f"models.{role} has vision: false, but the {role} must see the image; only the "
                                 "planner and the summariser may be text-only")
        if models.planner is not None and not models.planner.vision:
            if TASK_MAKERS[self.tasks.kind].model_roles and models.task_writer is None:
                raise ValueError("models.planner has vision: false, but tasks.kind vlm makes it the task writer, "
                                 "which must see the image: set models.task_writer (a VLM)")
            if models.reader is None:
                raise ValueError("models.planner has vision: false, so it cannot read: set models.reader (a VLM, "
                                 "or {backend: rapidocr})")
            if models.detector is None and models.locator is None:
                raise ValueError("models.planner has vision: false, so it cannot locate: set models.detector (e.g. "
                                 "{backend: rapidocr} or grounding-dino) or models.locator (a VLM)")

    def fingerprint(self) -> str:
        """Hash of everything that changes outputs (the executor and the filter do not), to refuse mixing runs."""
        data = self.model_dump(mode="json", exclude={"executor", "filter"})
        data["models"] = {role: model.identity() if isinstance(model, ChatModelConfig) else data["models"][role]
                          for role, model in self.models}  # endpoints, limits and prices do not change outputs
        data["prompts_dir"] = data["tasks"]["synthesis"]["prompts_dir"] = None  # their contents are hashed separately
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def pipeline_file(value: Path | str | None, default: Path = DEFAULT_CONFIG) -> Path:
    """`--config`: a YAML file, or the name of a shipped pipeline (`mmcof-gen pipelines` lists them)."""
    if value is None:
        return default
    if Path(value).is_file():
        return Path(value)
    shipped = resources.pipelines()
    if str(value) in shipped:
        return shipped[str(value)]
    raise ConfigError(f"--config {value}: no such file or shipped pipeline; pass a YAML file or one of: "
                      f"{', '.join(shipped)}")


def read_yaml(path: Path):
    """The one YAML loader of config files (pipelines, fine-tune recipes): an empty file reads as {}, and
    a file that is not YAML is a ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None


def load_config(path: Path | str | None = None, overrides: dict[str, object] | None = None) -> PipelineConfig:
    """Read a pipeline YAML (a file or a shipped name) with `overrides` (dotted field -> value, e.g. the CLI's
    {"executor.workers": 4}; None: not given) merged in, then validated once, file and flags together.
    A relative `prompts_dir` is taken relative to the YAML file, an absolute one as is; without one the
    shipped prompts of the agent's kind are used."""
    path = pipeline_file(path)
    try:
        data = read_yaml(path)
        for section in (data, (data.get("tasks") or {}).get("synthesis") or {}):
            if isinstance(section, dict) and section.get("prompts_dir") is not None:
                section["prompts_dir"] = (path.parent / section["prompts_dir"]).resolve()
        for dotted, value in (overrides or {}).items():
            if value is None:
                continue
            *sections, name = dotted.split(".")
            section = data
            for key in sections:
                if section.get(key) is None:
                    section[key] = {}
                section = section[key]
            section[name] = value
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems = invalid_fields(exc)
        raise ConfigError(f"{path}: {problems}") from None
    except (AttributeError, TypeError):
        raise ConfigError(f"{path}: a pipeline YAML is a mapping of sections (see `mmcof-gen pipelines --show "
                          "default`)") from None
    for folder in (config.prompts_dir, config.tasks.synthesis.prompts_dir):
        if folder is not None and not folder.is_dir():
            raise ConfigError(f"{path}: prompts_dir {folder} is not a folder")
    config._file = path
    return config


def require_extras(config: PipelineConfig) -> None:
    """Every extra the pipeline's settings need, checked before any image is read."""
    if extra := EXECUTORS[config.executor.kind].extra:
        extras.require(extra, f"executor {config.executor.kind}")
    for role, model in config.models:
        if model is None:
            continue
        if isinstance(model, ChatModelConfig) and (extra := CHAT_BACKENDS[model.backend].extra):
            extras.require(extra, f"models.{role} backend {model.backend}")
        elif role == "detector" and (extra := DETECTORS[model.backend].extra):
            extras.require(extra, f"models.detector backend {model.backend}")
    if config.tasks.near_duplicate_distance is not None:
        extras.require("data", "tasks.near_duplicate_distance", ("imagehash",))
