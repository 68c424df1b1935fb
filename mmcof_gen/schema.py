"""The data contracts of a run (docs/architecture.md, "Data contracts"): every record is one JSON line.

Ids are deterministic, so a resumed run skips what is done and a re-run of the same input with the
same config reproduces the same ids.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

Box = tuple[int, int, int, int]
"""[x1, y1, x2, y2] in integer pixels; which pixels (original image or working frame) the field says."""

Status = Literal["accepted", "rejected"]
Action = Literal["locate", "read", "zoom", "adjust", "answer"]


def short_hash(*parts: str) -> str:
    """A stable 16-hex-digit id from text parts (sha256, newline-joined)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


def reason_kind(reason: str | None) -> str:
    """The kind of a rejection or drop reason, which every writer puts before its first colon ("budget: 8
    planner steps without a verified answer" is a "budget"); how reasons are counted."""
    return (reason or "").split(":")[0]


def named_object(path: str):
    """The object a registry entry names as "module:name", imported now: an entry names its class or function
    so that its module (and its heavy or optional imports) is imported only when a run needs it."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def registered(name: str, registry: dict) -> str:
    """A config field naming a part of `registry` (a pydantic validator's body): the name, or the error a
    Literal of the registry's names would give."""
    if name not in registry:
        names = [repr(key) for key in registry]
        raise PydanticCustomError("literal_error", "Input should be {expected}",
                                  {"expected": " or ".join(filter(None, [", ".join(names[:-1]), names[-1]]))})
    return name


def one_of(registry: dict) -> Any:
    """The type of a config field naming a part of `registry`: checked against the registry as it is when the
    field is validated, so a part registered later (a plugin, a test) is accepted."""
    return Annotated[str, AfterValidator(lambda name: registered(name, registry))]


def invalid_fields(exc: ValidationError, limit: int | None = None, whole: str = "value") -> str:
    """Each invalid field and why, on one line (pydantic's own first line only says how many)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or whole}: {e['msg']}" for e in exc.errors()[:limit])


def task_id(image_sha256: str, question: str) -> str:
    return short_hash(image_sha256, question)


def trajectory_id(task_id_: str, resolution: int) -> str:
    return f"{task_id_}-r{resolution}"


class Task(BaseModel):
    """A question about one image, with whatever ground truth its source gives."""

    id: str
    image: str = Field(description="path relative to the images folder, POSIX separators")
    image_sha256: str
    question: str
    options: list[str] | None = None
    answer: str | None = None
    gt_boxes: list[Box] = Field(default_factory=list, description="original-image pixels")
    source: str
    question_type: str
    position: str | None = Field(default=None, description="where the question points, e.g. 'bottom left'")
    agreement: float | None = Field(default=None, description="verify.consistency: share of the crop answers "
                                                               "that gave the answer")
    easy_tries: tuple[int, int] | None = Field(default=None, description="verify.difficulty: (correct, tries) of the "
                                                                           "small model on the whole frame")


class View(BaseModel):
    """One resolution budget R of a task: the working frame the model sees."""

    resolution: int
    width: int
    height: int
    original_width: int
    original_height: int
    frame_sha256: str = Field(description="imaging.image_sha256 of the frame, to prove re-execution")

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels -> frame pixels."""
        return self.width / self.original_width, self.height / self.original_height


class Detection(BaseModel):
    box: Box
    score: float
    label: str = ""


class ModelCall(BaseModel):
    """One model call behind a step: who answered, what it cost, how often it was retried."""

    role: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    retries: int = 0
    cost_usd: float = 0.0
    gpu_seconds: float = 0.0


class Step(BaseModel):
    """One raw action of the search, kept for provenance and the HTML viewer."""

    thought: str = ""
    action: Action
    arguments: dict = Field(default_factory=dict)
    box: Box | None = Field(default=None, description="frame pixels")
    observation: str = ""
    detections: list[Detection] = Field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    calls: list[ModelCall] = Field(default_factory=list, description="model calls made for this step")


class ChainStep(BaseModel):
    """One kept zoom of the chain: an assistant turn with a thought and one tool call."""

    thought: str
    box: Box = Field(description="frame pixels, before the crop function enlarges it")
    label: str | None = None


class Verdict(BaseModel):
    correct: bool
    predicted: str | None
    expected: str | None
    reason: str


class Provenance(BaseModel):
    package_version: str
    config_hash: str
    models: dict[str, str] = Field(default_factory=dict)
    prompts: dict[str, str] = Field(default_factory=dict, description="template name -> content hash")


class Trajectory(BaseModel):
    """A finished search at one resolution: raw steps, the kept chain and the verdict."""

    id: str
    task: Task
    view: View
    steps: list[Step] = Field(default_factory=list)
    chain: list[ChainStep] = Field(default_factory=list)
    final_thought: str = ""
    answer: str | None = None
    verdict: Verdict | None = None
    needs_zoom: bool
    provenance: Provenance
    status: Status
    reason: str | None = None

    @property
    def kind(self) -> str:
        """"zoom" when the search needed a zoom, else "direct": what stats and the report count. A search that
        needed one may keep no chain box (agent/vlm_search.py `_finish`): its sample is direct (`sample_kind`)."""
        return "zoom" if self.needs_zoom else "direct"

    @property
    def sample_kind(self) -> str:
        """"zoom" when the sample shows a zoom chain, else "direct": what export and filter's balance count."""
        return "zoom" if self.chain else "direct"


class ErrorRecord(BaseModel):
    """Work that failed (an unreadable image, a crashed search), or an image kept out at the source (stage
    `skipped`: on the exclusion list, a near-duplicate). A permanent error is done: a resume skips it. A
    transient one (a worker died, a model out of reach after its retries) is tried again by a resume; the
    record that attempt writes, under the same id, supersedes it."""

    id: str
    stage: Literal["image", "tasks", "trajectory", "skipped"]
    image: str
    task_id: str | None = None
    resolution: int | None = None
    reason: str
    transient: bool = Field(False, description="true: retried when the same command runs again")


class RejectedTask(BaseModel):
    """A task proposal that task synthesis dropped (never searched), kept with the reason."""

    object: str
    box: Box | None = Field(default=None, description="original-image pixels")
    question: str | None = None
    reason: str


class ImageTasks(BaseModel):
    """The tasks of one image, cached so that a resume does not synthesise them again."""

    id: str
    image: str
    image_sha256: str
    width: int
    height: int
    tasks: list[Task]
    rejected: list[RejectedTask] = Field(default_factory=list, description="synthesised proposals dropped, and why")
    calls: list[ModelCall] = Field(default_factory=list, description="model calls that task synthesis made")


class ManifestInputs(BaseModel):
    """What a run was made from (`synthesize` writes it once): the images folder, where its tasks came from
    (`RunInputs.source_kind`: folder, questions, coco, vstar) and the task files with their sha256."""

    model_config = ConfigDict(extra="allow")

    images: str | None = None
    source: str = "folder"
    questions: str | None = None
    questions_sha256: str | None = None
    coco: str | None = None
    coco_sha256: str | None = None


class Relocation(BaseModel):
    """The images folder of a run moved (`synthesize --relocated`): where to, and when."""

    images: str
    at: str | None = None


class Manifest(BaseModel):
    """A run folder's `manifest.json`: the config snapshot, fingerprint, inputs and versions a run was made
    with, and what filter added (`filter`, `counts`). Manifests of older versions load: a field they lack
    takes the default below, and a field this class does not name is kept as it is; `dump` writes back only
    what the file held or a writer set, so a manifest read and written again is the same."""

    model_config = ConfigDict(extra="allow")

    tool: str | None = None
    fingerprint: str | None = None
    created: str | None = None
    updated: str | None = None
    config: dict[str, Any] = Field(default_factory=dict, description="the PipelineConfig snapshot, as JSON")
    prompts: dict[str, Any] = Field(default_factory=dict, description="template name -> content hash")
    models: dict[str, Any] = Field(default_factory=dict, description="model role -> model name")
    versions: dict[str, Any] = Field(default_factory=dict, description="package -> version")
    inputs: ManifestInputs = Field(default_factory=ManifestInputs)
    relocations: list[Relocation] = Field(default_factory=list)
    servers: Any = None
    filter: dict[str, Any] | None = Field(default=None, description="set by filter: its source, config and counts")
    counts: dict[str, Any] | None = None

    @property
    def images_folder(self) -> str | None:
        """Where the run's images are now: the folder of its last relocation, else the one it was made from."""
        return self.relocations[-1].images if self.relocations else self.inputs.images

    @property
    def max_pixels(self) -> int | None:
        """The run's images.max_pixels (its frames' size), None in a manifest without one."""
        value = self.config.get("images", {}).get("max_pixels")
        return None if value is None else int(value)

    @property
    def tasks_kind(self) -> str | None:
        """"given" when the run's tasks were given (questions, COCO, V*), else its tasks.kind (None if not recorded)."""
        if self.inputs.source != "folder":
            return "given"
        return self.config.get("tasks", {}).get("kind")

    def dump(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True)
