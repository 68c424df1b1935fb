"""HR-Bench 4K / 8K (DreamMr/HR-Bench): `hr_bench_4k.tsv`, `hr_bench_8k.tsv` or their parquet, 800 rows each.

Columns `index, question, answer, category, A, B, C, D, cycle_category, image` (image base64 inline, or the
index of a row sharing it); categories FSP (single-instance) and FCP (cross-instance). Its evaluation
(`HRBenchDataset.evaluate` with `utils/hrbench.py`) asks an LLM judge yes/no for each prediction against
`<letter>. <option text>`, takes per `cycle_category` group the accuracy of each category and of the whole
group (`all`), and reports each of those averaged over the groups. Ours: an answer that names an option
(`B`, `(B) text`, the option text) is scored by its letter; only the others go to that yes/no judge (its
prompt to the letter, `resources/prompts/benchmarks/hrbench_judge.txt`); without `--judge-endpoint` they are wrong.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmcof_gen import resources
from mmcof_gen.benchmarks.base import Benchmark, accuracy
from mmcof_gen.benchmarks.embedded import row_item, table_columns, table_rows
from mmcof_gen.models.chat import ChatError, ChatMessage, ChatModel
from mmcof_gen.prompts import Prompts
from mmcof_gen.scoring import Score, score_by_rules
from mmcof_gen.tasks.vstar import BenchItem

PROMPTS = Prompts(resources.prompts("benchmarks"))
COLUMNS = {"question", "answer", "category", "cycle_category", "image", "A"}
_YES_NO = re.compile(r"^(yes|no)", re.IGNORECASE)


def detect(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in (".tsv", ".parquet") and COLUMNS <= set(table_columns(path))


def load(path: Path) -> list[BenchItem]:
    return [row_item(path, row, "hrbench", row["category"].strip(), group=row["cycle_category"].strip())
            for row in table_rows(path)]


def title(path: Path) -> str:
    size = next((s for s in ("4K", "8K") if s.lower() in path.name.lower()), "")
    return f"HR-Bench {size}".strip()


async def judge(item: BenchItem, predicted: str | None, model: ChatModel | None) -> Score:
    """An answer naming an option is scored by its letter; any other goes to HR-Bench's yes/no judge."""
    decided = score_by_rules(predicted, item.options, item.answer)
    if decided is not None:
        return decided
    if model is None:
        return Score(False, "unmatched")
    options = "\n".join(f"{chr(65 + i)}. {option}" for i, option in enumerate(item.options or []))
    prompt = PROMPTS.render("hrbench_judge", question=item.question, options=options,
                            expected=f"{item.label}. {item.answer}", predicted=predicted)
    try:
        reply = await model.complete([ChatMessage("user", prompt)], max_tokens=16, temperature=0.0)
    except ChatError:
        return Score(False, "judge_error")
    found = _YES_NO.match(reply.text.strip())
    return Score(bool(found) and found.group(1).lower() == "yes", "judge")


def score(records: list, items: dict[str, BenchItem]) -> dict:
    """Per cycle group: the accuracy of each category and of the group (`all`); then each averaged over groups."""
    cycles: dict[str, dict[str, float]] = {}
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(items[record.item].group, []).append(record)
    for group, mine in sorted(groups.items()):
        categories = sorted({r.category for r in mine})
        cycles[group] = {"all": accuracy(mine),
                         **{c: accuracy([r for r in mine if r.category == c]) for c in categories}}
    keys = sorted({key for figures in cycles.values() for key in figures}, key=lambda k: (k == "all", k))
    average = {key: round(sum(figures.get(key, 0.0) for figures in cycles.values()) / len(cycles), 4) for key in keys}
    return {"table": average, "detail": {"cycles": cycles, "average": average}}


BENCHMARK = Benchmark(
    name="hrbench", files="HR-Bench hr_bench_4k.tsv / hr_bench_8k.tsv or .parquet",
    scoring="HR-Bench: accuracy per category and overall (all) within each cycle_category group, averaged over "
            "the groups; answers that name no option judged yes/no by the LLM judge",
    detect=detect, load=load, score=score, title=title, judge=judge)
