"""Counts of a run folder, computed from its records (the truth), not from the manifest."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from mmcof_gen.schema import ImageTasks, ModelCall, reason_kind
from mmcof_gen.store import RunStore, StoreError

NO_TEXT = "no small legible text: the default pipeline asks about text; for objects use tasks.kind vlm"
NO_OBJECT = "no small object proposed"
NO_GIVEN = "each question given for it was refused (errors.jsonl says why)"
# what an image without tasks and without dropped proposals means, by where the run's tasks came from
NOTHING_FOUND = {"ocr": NO_TEXT, "vlm": NO_OBJECT, "given": NO_GIVEN}


def no_task_reason(image: ImageTasks, tasks_kind: str) -> str:
    """Why an image gave no task: the first dropped proposal's reason (up to its colon), or what was not found."""
    if image.rejected:
        return reason_kind(image.rejected[0].reason)
    return NOTHING_FOUND[tasks_kind]


def run_stats(store: RunStore) -> dict:
    """`tasks, accepted, rejected, errors (transient_errors of them retried on resume), direct, zoom`, per
    resolution, the common rejection reasons, the images that gave no task and why, the tasks dropped at
    synthesis and why, and per model role the calls, tokens, retries, cost (USD) and GPU-seconds recorded in
    the trajectories' steps."""
    per_resolution: dict[int, Counter] = {}
    totals: Counter = Counter()
    zooms: Counter = Counter()
    reasons: Counter = Counter()
    usage: dict[str, Counter] = {}
    for trajectory in store.trajectories():
        _count_calls(usage, (call for step in trajectory.steps for call in step.calls))
        counts = per_resolution.setdefault(trajectory.view.resolution, Counter())
        counts[trajectory.status] += 1
        totals[trajectory.status] += 1
        if trajectory.status == "accepted":
            counts[trajectory.kind] += 1
            totals[trajectory.kind] += 1
            zooms[len(trajectory.chain)] += 1
        else:
            reasons[reason_kind(trajectory.reason)] += 1
    errors = list(store.errors())
    for error in errors:
        if error.resolution is not None:
            per_resolution.setdefault(error.resolution, Counter())["errors"] += 1
    images = list(store.image_tasks())
    _count_calls(usage, (call for image in images for call in image.calls))  # task synthesis (tasks.kind vlm)
    tasks_kind = _tasks_kind(store)
    no_task = Counter(no_task_reason(image, tasks_kind) for image in images if not image.tasks)
    dropped = Counter(reason_kind(r.reason) for image in images for r in image.rejected)
    keys = ("accepted", "rejected", "errors", "direct", "zoom")
    return {
        "images": len(images),
        "image_errors": sum(e.stage == "image" for e in errors),
        "tasks": sum(len(i.tasks) for i in images),
        "images_without_tasks": dict(no_task.most_common()),
        "tasks_dropped": dict(dropped.most_common(10)),
        "accepted": totals["accepted"],
        "rejected": totals["rejected"],
        "errors": sum(e.stage != "skipped" for e in errors),
        "transient_errors": sum(e.transient for e in errors),  # tried again when the same command runs again
        "skipped": sum(e.stage == "skipped" for e in errors),
        "direct": totals["direct"],
        "zoom": totals["zoom"],
        "per_resolution": {str(r): {k: c[k] for k in keys} for r, c in sorted(per_resolution.items())},
        "zooms_per_accepted": {str(k): v for k, v in sorted(zooms.items())},
        "rejection_reasons": dict(reasons.most_common(10)),
        "models": {role: {k: round(v, 6) if isinstance(v, float) else v for k, v in counts.items()}
                   for role, counts in sorted(usage.items())},
    }


def _count_calls(usage: dict[str, Counter], calls: Iterable[ModelCall]) -> None:
    for call in calls:
        usage.setdefault(call.role, Counter()).update(
            calls=1, prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens, retries=call.retries,
            cost_usd=call.cost_usd, gpu_seconds=call.gpu_seconds, seconds=call.seconds)


def _tasks_kind(store: RunStore) -> str:
    """"given" when the run's tasks were given (questions, COCO, V*), else tasks.kind of the run; a filtered
    folder is counted before its manifest is written: its tasks say."""
    try:
        kind = store.manifest().tasks_kind
    except StoreError:
        kind = None
    if kind is None:
        sources = {task.source for image in store.image_tasks() for task in image.tasks}
        return "vlm" if "vlm-synthesis" in sources else "ocr"
    return kind


def no_task_line(stats: dict) -> str:
    """The end-of-run line on images that gave no task, e.g. "3 images gave no task: no small legible text..."."""
    reasons = stats["images_without_tasks"]
    return f"{sum(reasons.values())} image(s) gave no task: " + "; ".join(f"{k} ({v})" for k, v in reasons.items())
