"""The results table a paper prints: one row per model x benchmark x mode x R, its benchmark's columns in
percent, the protocol and decoding parameters in its header; `results.md` and `results.csv` beside
`report.json`. `compare` sets two results folders side by side and marks what differs.

    write_tables(Path("outputs/eval"), report)
    print(compare(Path("outputs/eval-base"), Path("outputs/eval-ours")))
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mmcof_gen.store import write_bytes_atomic
from mmcof_gen.tasks.vstar import BenchError

MARKDOWN, CSV = "results.md", "results.csv"


def result_rows(report: dict) -> list[dict]:
    """The report's published figures as table rows, figures in percent (two decimals)."""
    bench = report["benchmark"]
    return [{"model": report["model"], "benchmark": bench["title"], "mode": row["mode"], "R": row["resolution"],
             "n": row["n"], **{key: round(100 * value, 2) for key, value in row["table"].items()}}
            for row in bench["results"]]


def _header(report: dict) -> list[str]:
    bench = report["benchmark"]
    return [f"protocol: {report['protocol']}", f"decoding: {json.dumps(report.get('decoding'), sort_keys=True)}",
            f"scoring: {bench['scoring']}", f"judge: {report.get('judge')}", f"bench: {report.get('bench')}"]


def write_tables(out: Path, report: dict) -> None:
    rows = result_rows(report)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [f"# {report['model']} on {report['benchmark']['title']}", ""]
    lines += [f"- {line}" for line in _header(report)] + [""]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    write_bytes_atomic(out / MARKDOWN, ("\n".join(lines) + "\n").encode())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    text.write("".join(f"# {line}\n" for line in _header(report)))  # comment lines (pandas: comment="#")
    writer.writerow(["protocol", "decoding", *columns])
    decoding = json.dumps(report.get("decoding"), sort_keys=True)
    for row in rows:
        writer.writerow([report["protocol"], decoding, *(row.get(c, "") for c in columns)])
    write_bytes_atomic(out / CSV, text.getvalue().encode())


def _report(folder: Path) -> dict:
    path = Path(folder) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise BenchError(f"--compare {folder}: no readable report.json; pass two folders `eval` wrote") from None
    if "benchmark" not in report:
        raise BenchError(f"--compare {folder}: its report.json predates the results table; re-run that eval to "
                         "rewrite it")
    return report


def compare(a: Path, b: Path) -> str:
    """Two results folders side by side: each figure of A and of B, B - A, and `*` where they differ."""
    reports = _report(a), _report(b)
    lines = [f"A: {a} ({reports[0]['model']}, protocol {reports[0]['protocol']})",
             f"B: {b} ({reports[1]['model']}, protocol {reports[1]['protocol']})"]
    for key in ("protocol", "decoding", "judge"):
        if reports[0].get(key) != reports[1].get(key):
            lines.append(f"* {key} differs: A {json.dumps(reports[0].get(key))}, B {json.dumps(reports[1].get(key))}")
    figures = [{(r["benchmark"], r["mode"], r["R"], k): v for r in result_rows(report) for k, v in r.items()
                if k not in ("model", "benchmark", "mode", "R")} for report in reports]
    keys = list(dict.fromkeys([*figures[0], *figures[1]]))
    width = max([len(f"{k[0]} {k[1]} R={k[2]} {k[3]}") for k in keys] + [6])
    lines.append(f"{'figure':<{width}}  {'A':>8}  {'B':>8}  {'B-A':>8}")
    for key in keys:
        left, right = figures[0].get(key), figures[1].get(key)
        diff = f"{right - left:+.2f}" if left is not None and right is not None else ""
        mark = " *" if left != right else ""
        lines.append(f"{f'{key[0]} {key[1]} R={key[2]} {key[3]}':<{width}}  {_shown(left):>8}  {_shown(right):>8}  "
                     f"{diff:>8}{mark}")
    return "\n".join(lines)


def _shown(value) -> str:
    return "-" if value is None else str(value)
