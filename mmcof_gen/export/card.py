"""The dataset card (README.md of an export): what is in it, where it came from, how to train on it."""

from __future__ import annotations

from mmcof_gen.cof_format import ZOOMIN
from mmcof_gen.export.base import ExportFormat
from mmcof_gen.targets import TARGETS, Target


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_card(report: dict, fmt: ExportFormat, target: Target = TARGETS["qwen2.5-vl"]) -> str:
    budget = report["token_budget"]
    per_r = report["per_resolution"]
    licence_files = report["sources"]["licence_files"]
    parts = [
        f"# mmcof chain-of-focus data ({fmt.name})",
        "Chain-of-focus (search and zoom) samples made by mmcof-gen: each sample is a working frame "
        "(`images[0]`), zero or more zoom turns whose crops are `images[1:]` (made with the CoF crop function), "
        "and a verified answer. Boxes are integer pixels of the working frame.",
        f"- samples: **{report['samples']}** ({report['direct']} direct, {report['zoom']} with zooms); "
        f"images: {report['images']}\n- data file: `{fmt.data_file}`\n"
        f"- run config hash: `{report['config_hash']}`; mmcof-gen {report['package_version']}\n"
        f"- dropped at export: {report['dropped']} (reasons in `export_report.json`)",
        "## How to train\n" + fmt.usage.format(max_pixels=budget["max_pixels"], cutoff_len=budget["cutoff_len"]),
        "## Token budget\n"
        f"At `max_pixels = {budget['max_pixels']}` a sample holds at most **{budget['max_tokens']} tokens** "
        f"({budget['text_tokens']}); mean {budget['mean_tokens']}.\n"
        f"- trainer: `cutoff_len: {budget['cutoff_len']}` (shorter truncates image tokens)\n"
        f"- vLLM: `--limit-mm-per-prompt '{budget['limit_mm_per_prompt']}'` (the default is one image per prompt)",
        "## Resolutions\n" + _table(("R", "direct", "zoom"),
                                    [(r, row["direct"], row["zoom"]) for r, row in per_r.items()]),
        "## Frame sizes (longer side, px)\n" + _table(("longer side", "samples"), list(report["frame_sizes"].items())),
        "## Zooms per sample\n" + _table(("zooms", "samples"), list(report["zooms"].items())),
        "## Sources and licences\n"
        f"Images come from `{report['sources']['images']}` (task sources: "
        f"{', '.join(f'{k} ({v})' for k, v in report['sources']['task_sources'].items()) or 'none'}). "
        "mmcof-gen does not know their licence: frames and crops are derived from these images and carry their "
        "licence, so check it before you publish or train on this data. "
        + (f"Licence files found beside the images: {', '.join(f'`{f}`' for f in licence_files)}."
           if licence_files else "No licence file was found beside the images."),
    ]
    student = target.card_text()
    if student is not None:  # after How to train, whose trainer settings it replaces
        parts.insert(3, f"## Student model: {target.name}\n" + student.format(
            max_pixels=budget["max_pixels"], cutoff_len=budget["cutoff_len"],
            max_image_tokens=budget["max_pixels"] // (target.factor * target.factor)))
    if fmt.name == "v1":
        parts.append(f"## The `{ZOOMIN}` token\n{ZOOMIN} is not a Qwen2.5-VL token; see *How to train*.")
    return "\n\n".join(parts) + "\n"
