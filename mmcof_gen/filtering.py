"""`mmcof-gen filter`: keep the trajectories that make good training data, and say why each other one went.

Reads a run folder (or a filtered one) and writes a new folder with the same layout, so every reader
(stats, export, view) takes both: `manifest.json` (copied, plus a `filter` block), `tasks.jsonl`
(every task file of the run, as one), `trajectories.jsonl` (the kept records, unchanged) and
`filter_report.json`. The input is never modified.

Rules run in a fixed order and a record is dropped by the first one it fails, with that rule's exact
reason; balance runs last, on the survivors, by seeded down-sampling (the same input and config always
keep the same records). Records are streamed twice (judge, then copy the kept ones), so memory stays
small on large runs.
"""

from __future__ import annotations

import random
import re
import shutil
from collections import defaultdict
from collections.abc import Callable
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

from rich.table import Table

from mmcof_gen import cof_format
from mmcof_gen.config import FilterConfig
from mmcof_gen.imaging import box_area, scale_box, validate_box, zoom_region
from mmcof_gen.replay import FrameSource, check_chain, replayable, replayed
from mmcof_gen.schema import ImageTasks, Manifest, Trajectory
from mmcof_gen.stats import run_stats
from mmcof_gen.store import MANIFEST, TASKS, AtomicFile, RunStore, claim_out_dir, record_output, write_json_atomic
from mmcof_gen.tasks.exclusion import load_exclusions

REPORT = "filter_report.json"
MARKER = ".mmcof-filter"
RULES = ("verified", "format", "box_validity", "box_size", "chain_length", "contamination", "reexecution",
         "duplicate", "balance")
EXAMPLES = 5
_TAG = re.compile(r"</?(think|tool_call|answer)>")

Rule = Callable[[Trajectory], "str | None"]


# -- the rules: each returns None (keep) or the reason to drop ------------------------------------------
def check_verified(trajectory: Trajectory) -> str | None:
    if trajectory.status != "accepted":
        return f"rejected at synthesis: {trajectory.reason or 'no reason recorded'}"
    if trajectory.verdict is None or not trajectory.verdict.correct:
        reason = trajectory.verdict.reason if trajectory.verdict else "no verdict"
        return f"answer not verified: {reason}"
    return None


def unbalanced_tag(text: str) -> str | None:
    """The first `<think>`, `<tool_call>` or `<answer>` tag that does not open and close in turn."""
    open_tag: str | None = None
    for match in _TAG.finditer(text):
        closing, name = match.group(0).startswith("</"), match.group(1)
        if closing != (open_tag == name):
            return match.group(0)
        open_tag = None if closing else name
    return f"<{open_tag}>" if open_tag else None


def check_format(trajectory: Trajectory) -> str | None:
    """The exported messages are well formed (docs/format.md): tags balanced per message, exactly one tool
    call with the chain's box in each zoom turn, an answer in the last turn, one `<image>` per image."""
    messages = cof_format.trajectory_messages(trajectory)
    for number, message in enumerate(messages):
        tag = unbalanced_tag(message["content"])
        if tag:
            return f"message {number} ({message['role']}): unbalanced {tag}"
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    for zoom, (text, step) in enumerate(zip(turns, trajectory.chain), 1):
        if text.count("<tool_call>") != 1:
            return f"zoom turn {zoom} holds {text.count('<tool_call>')} tool calls, not exactly 1"
        try:
            call = cof_format.parse_tool_call(text)
        except ValueError as exc:
            return f"zoom turn {zoom}: {exc}"
        if call["arguments"]["bbox_2d"] != list(step.box):
            return f"zoom turn {zoom}: the tool call box {call['arguments']['bbox_2d']} is not the chain box {list(step.box)}"
    last = turns[-1]
    if "<tool_call>" in last or cof_format.extract_answer(last) in (None, ""):
        return "the last turn must hold an <answer> and no tool call"
    placeholders = sum(m["content"].count(cof_format.IMAGE) for m in messages)
    if placeholders != 1 + len(trajectory.chain):
        return f"{placeholders} <image> placeholders for {1 + len(trajectory.chain)} images"
    return None


def check_box_validity(trajectory: Trajectory) -> str | None:
    for number, step in enumerate(trajectory.chain, 1):
        try:
            validate_box(step.box, trajectory.view.width, trajectory.view.height)
        except ValueError as exc:
            return f"zoom {number} box {list(step.box)} is invalid in the {trajectory.view.width}x{trajectory.view.height} frame: {exc}"
    return None


def box_size_rule(config: FilterConfig) -> Rule:
    def check(trajectory: Trajectory) -> str | None:
        frame_area = trajectory.view.width * trajectory.view.height
        for number, step in enumerate(trajectory.chain, 1):
            x1, y1, x2, y2 = step.box
            if min(x2 - x1, y2 - y1) < config.min_box_side:
                return f"zoom {number} box {list(step.box)} is smaller than {config.min_box_side} px on a side"
            if box_area(step.box) > config.max_box_area_fraction * frame_area:
                return (f"zoom {number} box {list(step.box)} covers {box_area(step.box) / frame_area:.0%} of the frame "
                        f"(more than {config.max_box_area_fraction:.0%})")
        return None
    return check


def chain_length_rule(config: FilterConfig) -> Rule:
    def check(trajectory: Trajectory) -> str | None:
        zooms = len(trajectory.chain)
        if not config.min_zooms <= zooms <= config.max_zooms:
            return f"{zooms} zooms, outside [{config.min_zooms}, {config.max_zooms}]"
        return None
    return check


def contamination_rule(excluded: set[str]) -> Rule:
    def check(trajectory: Trajectory) -> str | None:
        image = Path(trajectory.task.image)
        for key in (trajectory.task.image_sha256, trajectory.task.image, image.name, image.stem):
            if key in excluded:
                return f"image {trajectory.task.image} is on the exclusion list (as {key!r})"
        return None
    return check


def evidence_coverage(trajectory: Trajectory) -> float:
    """The largest share of a ground-truth box (scaled to the frame) that the last crop shows."""
    W, H = trajectory.view.width, trajectory.view.height
    sx, sy = trajectory.view.scale
    rx1, ry1, rx2, ry2 = zoom_region(trajectory.chain[-1].box, W, H)
    best = 0.0
    for gt in trajectory.task.gt_boxes:
        gx1, gy1, gx2, gy2 = scale_box(gt, sx, sy)
        inter = max(0, min(rx2, gx2) - max(rx1, gx1)) * max(0, min(ry2, gy2) - max(ry1, gy1))
        best = max(best, inter / max(1, (gx2 - gx1) * (gy2 - gy1)))
    return best


def reexecute(min_evidence_overlap: float, frames: FrameSource, trajectory: Trajectory) -> str | None:
    """The re-execution rule: the frame rebuilds to its recorded hash, the crop function accepts every zoom,
    and the last crop shows enough of the ground-truth box; runs in the filter's worker processes
    (ReplayError or a reason)."""
    check_chain(frames.frame_size(trajectory), trajectory)
    if trajectory.chain and trajectory.task.gt_boxes:
        coverage = evidence_coverage(trajectory)
        if coverage < min_evidence_overlap:
            return (f"the last crop shows {coverage:.0%} of the ground-truth box "
                    f"(at least {min_evidence_overlap:.0%} needed)")
    return None


def duplicate_rule() -> Rule:
    """One sample per (frame, question): R budgets above an image's size give the same frame."""
    seen: dict[tuple[str, str], str] = {}

    def check(trajectory: Trajectory) -> str | None:
        question = " ".join(trajectory.task.question.lower().split())
        key = (trajectory.view.frame_sha256, question)
        if key in seen:
            return f"duplicate of {seen[key]} (same frame pixels and question)"
        seen[key] = trajectory.id
        return None
    return check


def balance_drops(survivors: list[tuple[int, str, tuple[int, str], bool]], config: FilterConfig) -> dict[int, str]:
    """Positions to drop so that each (R, question type) group holds `direct_fraction` direct samples.

    `survivors` holds (position, id, group, is_direct). The larger side of each group is down-sampled
    with a RNG seeded by the config seed and the group, so the result never depends on input order.
    """
    groups: dict[tuple[int, str], list[tuple[int, str, bool]]] = defaultdict(list)
    for position, trajectory_id, group, direct in survivors:
        groups[group].append((position, trajectory_id, direct))
    drops: dict[int, str] = {}
    target = config.direct_fraction
    for group, members in sorted(groups.items()):
        direct = sorted((tid, pos) for pos, tid, is_direct in members if is_direct)
        zoom = sorted((tid, pos) for pos, tid, is_direct in members if not is_direct)
        if not direct or not zoom or target in (0, 1):
            keep_direct = len(direct) if target > 0 else 0
            keep_zoom = len(zoom) if target < 1 else 0
        elif len(direct) / (len(direct) + len(zoom)) > target:  # too many direct samples
            keep_direct, keep_zoom = round(len(zoom) * target / (1 - target)), len(zoom)
        else:
            keep_direct, keep_zoom = len(direct), min(len(zoom), round(len(direct) * (1 - target) / target))
        rng = random.Random(f"{config.seed}-{group[0]}-{group[1]}")
        name = f"R={group[0]}, {group[1]}"
        for kind, pool, keep in (("direct", direct, keep_direct), ("zoom", zoom, keep_zoom)):
            kept = set(rng.sample(range(len(pool)), keep))
            for index, (_, position) in enumerate(pool):
                if index not in kept:
                    drops[position] = (f"balance: {kind} sample down-sampled in group {name} "
                                       f"(target direct fraction {target:.2f})")
    return drops


# -- the command ----------------------------------------------------------------------------------------
def filter_run(run_dir: Path, out_dir: Path, config: FilterConfig, overwrite: bool = False, jobs: int = 1) -> dict:
    """Judge every trajectory of `run_dir`, write the kept ones to `out_dir`; returns the report. `overwrite`:
    replace a filter output of another run in `out_dir`.

    Re-execution runs in `jobs` processes; every rule's verdict is taken in run order, so the output is
    the same for any `jobs`."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    source = RunStore(run_dir)
    manifest = source.manifest()
    claim_out_dir(run_dir, out_dir, MARKER, earlier="filter output", overwrite=overwrite,
                  is_input="input folder; filter never modifies its input, pass a new folder")
    rules, after = _rules(config)
    if config.reexecution:
        replayable(source)

    total, dropped, survivors = _judge(source, rules, after, config, manifest, jobs)
    if config.balance:
        ids = {position: trajectory_id for position, trajectory_id, _, _ in survivors}
        for position, reason in balance_drops(survivors, config).items():
            dropped[position] = (ids[position], "balance", reason)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_kept(source, out_dir, dropped)
    _copy_tasks(source, out_dir / TASKS)
    enabled = {name for name, _ in rules + after} | {name for name, on in (
        ("reexecution", config.reexecution), ("balance", config.balance)) if on}
    report = _report(run_dir, out_dir, config, total, dropped, enabled)
    write_json_atomic(out_dir / REPORT, report)
    filter_block = {"source": str(run_dir.resolve()), "config": config.model_dump(mode="json"),
                    "kept": report["kept"], "dropped": report["dropped"],
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    # The manifest is written last: a folder without it is an interrupted filter, never a usable one.
    kept = manifest.model_copy(update={"filter": filter_block, "counts": run_stats(RunStore(out_dir))})
    write_json_atomic(out_dir / MANIFEST, kept.dump())
    record_output(out_dir, MARKER, run_dir)
    return report


def _rules(config: FilterConfig) -> tuple[list[tuple[str, Rule]], list[tuple[str, Rule]]]:
    """The rules `config` turns on, in their order: those before re-execution, and those after it (which run
    on its survivors, in run order)."""
    rules: list[tuple[str, Rule]] = []
    if config.verified:
        rules.append(("verified", check_verified))
    if config.format:
        rules.append(("format", check_format))
    if config.box_validity:
        rules.append(("box_validity", check_box_validity))
    if config.box_size:
        rules.append(("box_size", box_size_rule(config)))
    if config.chain_length:
        rules.append(("chain_length", chain_length_rule(config)))
    if config.exclude_file:
        exclusions = load_exclusions(config.exclude_file, "filter.exclude_file")
        rules.append(("contamination", contamination_rule(exclusions.keys)))
    after = [("duplicate", duplicate_rule())] if config.duplicate else []
    return rules, after


def _judge(source: RunStore, rules: list[tuple[str, Rule]], after: list[tuple[str, Rule]], config: FilterConfig,
           manifest: Manifest, jobs: int) -> tuple[int, dict[int, tuple[str, str, str]], list]:
    """`(total, dropped, survivors)`: each dropped position's (id, rule, reason), and each survivor's
    (position, id, (R, question type), is direct) for the balance."""
    dropped: dict[int, tuple[str, str, str]] = {}  # position -> (id, rule, reason)
    survivors = []
    total = 0
    for (position, trajectory, failed), replay in _judged(source, rules, config, manifest, jobs):
        total += 1
        if failed is None and replay is not None:
            failed = ("reexecution", str(replay))
        if failed is None:
            failed = _first_failure(after, trajectory)
        if failed:
            dropped[position] = (trajectory.id, *failed)
        else:
            group = (trajectory.view.resolution, trajectory.task.question_type)
            survivors.append((position, trajectory.id, group, trajectory.sample_kind == "direct"))
    return total, dropped, survivors


def _first_failure(rules: list[tuple[str, Rule]], trajectory: Trajectory) -> tuple[str, str] | None:
    for name, rule in rules:
        reason = rule(trajectory)
        if reason:
            return name, reason
    return None


def _judged(source: RunStore, rules: list[tuple[str, Rule]], config: FilterConfig, manifest: Manifest, jobs: int):
    """`((position, trajectory, (rule, reason) | None), re-execution result)` in run order: the rules before
    re-execution run here, and the trajectories that pass them are re-executed by `jobs` processes."""
    items = ((trajectory, (position, trajectory, _first_failure(rules, trajectory)))
             for position, trajectory in enumerate(source.trajectories()))
    if not config.reexecution:
        return ((payload, None) for _, payload in items)
    todo = ((trajectory if payload[2] is None else None, payload) for trajectory, payload in items)
    return replayed(todo, partial(reexecute, config.min_evidence_overlap), manifest, jobs)


def _write_kept(source: RunStore, out_dir: Path, dropped: dict[int, tuple[str, str, str]]) -> None:
    """Copy the kept records, unchanged, through a temporary file (a killed filter leaves no half file)."""
    with AtomicFile(out_dir / "trajectories.jsonl") as tmp:
        with tmp.open("w", encoding="utf-8") as handle:
            for position, trajectory in enumerate(source.trajectories()):
                if position not in dropped:
                    handle.write(trajectory.model_dump_json() + "\n")
        for stale in out_dir.glob("trajectories-*.jsonl"):
            stale.unlink()


def _copy_tasks(source: RunStore, dst: Path) -> None:
    """Every task file of the run (a Ray run has one per agent actor) as one, through a temporary file."""
    paths = source.files(ImageTasks)
    if not paths:
        return
    with AtomicFile(dst) as tmp, tmp.open("wb") as out:
        for path in paths:
            with path.open("rb") as handle:
                shutil.copyfileobj(handle, out)


def _report(run_dir: Path, out_dir: Path, config: FilterConfig, total: int,
            dropped: dict[int, tuple[str, str, str]], enabled: set[str]) -> dict:
    per_rule = {name: {"enabled": name in enabled, "dropped": 0, "examples": []} for name in RULES}
    records = []
    for position in sorted(dropped):
        trajectory_id, rule, reason = dropped[position]
        per_rule[rule]["dropped"] += 1
        if len(per_rule[rule]["examples"]) < EXAMPLES:
            per_rule[rule]["examples"].append(trajectory_id)
        records.append({"id": trajectory_id, "rule": rule, "reason": reason})
    return {"input": str(run_dir), "output": str(out_dir), "total": total, "kept": total - len(dropped),
            "dropped": len(dropped), "rules": per_rule, "dropped_records": records,
            "config": config.model_dump(mode="json")}


def report_table(report: dict) -> Table:
    """The report as a table: one row per rule, in the order the rules run."""
    table = Table(title=f"filter: kept {report['kept']} of {report['total']} ({report['dropped']} dropped)")
    for column in ("rule", "on", "dropped", "examples"):
        table.add_column(column, justify="right" if column == "dropped" else "left")
    for name, row in report["rules"].items():
        table.add_row(name, "yes" if row["enabled"] else "no", str(row["dropped"]), ", ".join(row["examples"][:2]))
    return table
