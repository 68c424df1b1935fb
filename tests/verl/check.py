"""verl's own RLHFDataset reads a `export --format verl` parquet: run with the python of a venv that has verl
(tests/verl/stage.sh makes one: `make test-verl`; tests/test_rl_export.py runs this
when MMCOF_VERL_PYTHON names that python), from the repository root:

    MMCOF_VERL_PYTHON=... $MMCOF_VERL_PYTHON tests/verl/check.py EXPORT_DIR WORK_DIR

Every row must come out of `RLHFDataset.__getitem__` with one image entry in its raw prompt per image, the zoom
tool's kwargs, and a non-empty ground truth; the image the tool opens (`qwen_vl_utils.fetch_image`, as verl's
`image_zoom_in_tool.create` does) must be the exported frame, unresized. Prints one JSON line; exit 1 on a failure.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def tiny_models():
    """tests/support/tiny_models.py by its path: a verl venv may hold a `tests` package of its own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_models", REPO / "tests" / "support" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(export_dir: Path, work: Path) -> int:
    import pyarrow.parquet as pq
    import verl
    from omegaconf import OmegaConf
    from qwen_vl_utils import fetch_image
    from transformers import AutoProcessor
    from verl.utils.dataset.rl_dataset import RLHFDataset

    model = tiny_models().build_tiny_qwen25vl(work / "tiny-qwen")
    processor = AutoProcessor.from_pretrained(model)
    files = sorted(str(p) for p in export_dir.glob("*.parquet"))
    rows = [row for f in files for row in pq.read_table(f).to_pylist()]
    config = OmegaConf.create({"max_prompt_length": 100_000, "filter_overlong_prompts": True,
                               "filter_overlong_prompts_workers": 1, "cache_dir": str(work / "cache")})
    dataset = RLHFDataset(files, processor.tokenizer, config, processor)
    failures = []
    if len(dataset) != len(rows):
        failures.append(f"RLHFDataset kept {len(dataset)} of {len(rows)} rows")
    for n in range(len(dataset)):
        item, row = dataset[n], rows[n]
        parts = [part for message in item["raw_prompt"] if isinstance(message["content"], list)
                 for part in message["content"]]
        if sum(part["type"] == "image" for part in parts) != len(row["images"]):
            failures.append(f"row {n}: {sum(p['type'] == 'image' for p in parts)} image entries, {len(row['images'])} images")
        create = item["tools_kwargs"].get("image_zoom_in_tool", {}).get("create_kwargs", {})
        if not create.get("image"):
            failures.append(f"row {n}: no image_zoom_in_tool create_kwargs.image")
        elif list(fetch_image({"image": create["image"]}).size) != row["extra_info"]["image_size"]:
            failures.append(f"row {n}: the tool's image is not the {row['extra_info']['image_size']} frame")
        if not str(item["reward_model"]["ground_truth"]).strip():
            failures.append(f"row {n}: empty ground truth")
    print(json.dumps({"verl": verl.__version__, "rows": len(rows), "read": len(dataset), "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
