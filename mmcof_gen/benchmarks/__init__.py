"""The benchmarks `eval` reads in their authors' own files, each scored as its paper scores it.

One module per benchmark, each a `Benchmark`: `detect(path)` (is this its layout?), `load(path)` (the
questions, images left where they are or as `EmbeddedImage`s read one at a time), `score(records, items)`
(the published figures of one mode x R: a `table` row with the columns papers print, and the `detail`
behind it) and, where the paper scores answers its own way, `judge`. The registry below is the one place a
benchmark is named; `--bench-format` takes its choices from it.

    benchmark = detect(Path("hr_bench_8k.tsv"))            # BENCHMARKS["hrbench"]
    items = select(benchmark.load(path), ["FSP"], limit=10)
"""

from __future__ import annotations

from pathlib import Path

from mmcof_gen.benchmarks import hrbench, mme_realworld, treebench, vstar
from mmcof_gen.benchmarks.base import Benchmark
from mmcof_gen.prompts import Prompts
from mmcof_gen.scoring import Score, score_answer as default_score
from mmcof_gen.tasks.vstar import BenchError, BenchItem

BENCHMARKS: dict[str, Benchmark] = {
    "hrbench": hrbench.BENCHMARK,
    "mme-realworld": mme_realworld.BENCHMARK,
    "treebench": treebench.BENCHMARK,
    "vstar": vstar.BENCHMARK,
    "jsonl": vstar.GENERIC,
}


def known_formats() -> str:
    return "; ".join(f"{name} ({benchmark.files})" for name, benchmark in BENCHMARKS.items())


def detect(path: Path, name: str | None = None) -> Benchmark:
    """The benchmark `name` names, or the one whose layout `path` is in; BenchError (one line) when none is."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"--bench {path} does not exist; pass a benchmark folder or file ({known_formats()})")
    if name is not None:
        return BENCHMARKS[name]
    for benchmark in BENCHMARKS.values():
        if benchmark.detect(path):
            return benchmark
    raise BenchError(f"--bench {path} is in no layout eval knows; the formats: {known_formats()}; "
                     "if it is one of them, pass --bench-format NAME")


def select(items: list[BenchItem], categories: list[str] | None = None, limit: int | None = None) -> list[BenchItem]:
    """The items of the given categories (a category, or its part before '/': `Perception` selects
    `Perception/OCR`), then the first `limit`; an unknown category is refused with the known ones."""
    if categories:
        known = {item.category for item in items} | {item.category.split("/")[0] for item in items}
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise BenchError(f"--categories {','.join(unknown)}: not a category of this benchmark; "
                             f"its categories: {', '.join(sorted(known))}")
        items = [item for item in items if item.category in categories or item.category.split("/")[0] in categories]
    return items[:limit]


async def score_answer(item: BenchItem, predicted: str | None, judge, prompts: Prompts) -> Score:
    """An answer scored as the item's benchmark scores answers (its own judge), else by the default rules."""
    benchmark = BENCHMARKS.get(item.bench)
    if benchmark is not None and benchmark.judge is not None:
        return await benchmark.judge(item, predicted, judge)
    return await default_score(item, predicted, judge, prompts)


def published(benchmark: Benchmark, records: list, items: dict[str, BenchItem]) -> list[dict]:
    """The benchmark's published figures for each (mode, R) of `records`, with its zoom rate."""
    groups: dict[tuple[str, int], list] = {}
    for record in records:
        groups.setdefault((record.mode, record.resolution), []).append(record)
    rows = []
    for (mode, resolution), group in sorted(groups.items()):
        figures = benchmark.score(group, items)
        zoom_rate = round(sum(bool(r.zooms) for r in group) / len(group), 4)
        rows.append({"mode": mode, "resolution": resolution, "n": len(group),
                     "table": {**figures["table"], "zoom_rate": zoom_rate}, "detail": figures.get("detail", {})})
    return rows

