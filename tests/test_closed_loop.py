"""The closed loop, for each student target: the demo pipeline's own export (`--target`) -> `mmcof-gen finetune`
-> `evaluate`, eval's own episode loop, on questions the model was never trained on. A tiny model of that family
is trained from scratch (for Qwen3-VL: its tool declared, frames at factor 32). It guards the agreement of the
export format, finetune's label masking and eval's prompt, tool-call reading and crop, not accuracy.

The data are what `make demo` makes (scenes from `mmcof_gen.scenes`, `synthesize` with pipelines/default.yaml,
`filter`, `export --format sharegpt --target <student>`, `validate`), at R=224 and 448 so that a step takes a
fraction of a second on CPU, on one scene: the pipeline's search costs about a minute of CPU per scene. Of that
export the model is trained on the chains that zoom at the smallest R and answer directly at the largest, so it
learns to do exactly that, and whether it zooms can only come from the frame's size (on the demo's first scene
that is one question, a zoom at R=224 and a direct answer at 448: the model learns those two chains by heart,
and a box it learnt is a valid one, all the loop needs). Eval then runs on questions it was not trained on: the
demo scene's other signs, and a demo scene of another seed and size: every tool call the model writes parses, and
on one same question the first reply at R=224 is a call that is executed (the frame cropped by eval's crop
function) while the first at R=448 answers. (Trained longer, the tiny Qwen2.5-VL garbles one call in three on the
unseen scene; trained less, the tiny Qwen3-VL garbles the JSON of one: hence the steps of each.)

Run alone with `pytest -m closed_loop`."""

from __future__ import annotations

import json

import pytest

from mmcof_gen import cof_format, resources
from mmcof_gen.cli import main
from mmcof_gen.evaluate import RESULTS, EvalRecord, EvalSettings, evaluate, model_target
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.positions import position_name
from mmcof_gen.prompts import Prompts
from mmcof_gen.scenes import generate_scenes
from mmcof_gen.store import read_jsonl
from mmcof_gen.tasks.vstar import BenchItem
from tests.support.tiny_models import build_tiny_qwen3vl, build_tiny_qwen25vl

pytestmark = [pytest.mark.closed_loop, pytest.mark.usefixtures("one_thread")]

RESOLUTIONS = (224, 448)
REPLY_TOKENS = 256  # a whole zoom reply, thought and call, is 130-150 tokens of the tiny tokenizers
STUDENTS = {  # target -> (tiny model builder, its processor's smallest image side, training steps)
    "qwen2.5-vl": (build_tiny_qwen25vl, 56, 150),
    "qwen3-vl": (build_tiny_qwen3vl, 32, 250),
}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """`make demo`'s scenes, search and filter, on one scene at R=224 and 448: the filtered run."""
    root = tmp_path_factory.mktemp("demo")
    images = root / "images"
    generate_scenes(images, count=1, seed=0)
    resolutions = ",".join(map(str, RESOLUTIONS))
    assert main_exit(["synthesize", "--images", str(images), "--out", str(root / "run"), "--config", "default",
                      "--resolutions", resolutions, "--exclude", str(images / "photos")]) == 0  # no text to ask about
    assert main_exit(["filter", str(root / "run"), "--out", str(root / "filtered"), "--config", "default"]) == 0
    return root / "filtered"


def zooms_small_answers_large(export) -> list[dict]:
    """Keeps in the export only the chains that zoom at the smallest R or answer directly at the largest, the
    behaviour the model is to learn; returns them."""
    kept = []
    for sample in json.loads((export / "mmcof.json").read_text()):  # ids are `<task>-r<R>`
        zooms = any("<tool_call>" in m["content"] for m in sample["messages"] if m["role"] == "assistant")
        if sample["id"].endswith(f"-r{RESOLUTIONS[0] if zooms else RESOLUTIONS[-1]}"):
            kept.append(sample)
    (export / "mmcof.json").write_text(json.dumps(kept))
    return kept


def held_out_items(folder, seed: int, trained: str = "") -> list[BenchItem]:
    """The signs of the demo scene of `seed` (made in `folder` unless there) that no training text in `trained`
    asks about, asked as the demo pipeline asks (prompts/tasks/question_text)."""
    generate_scenes(folder, count=1, seed=seed)
    prompts = Prompts(resources.prompts("tasks"))
    items = []
    for scene in json.loads((folder / "scenes.json").read_text())["scenes"]:
        for number, sign in enumerate(scene["signs"]):
            question = prompts.render("question_text", position=position_name(tuple(sign["cell"])))
            if question not in trained:
                items.append(BenchItem(id=f"{seed}/{scene['file']}#{number}", image=folder / scene["file"],
                                       question=question, options=None, answer=sign["text"], category="all"))
    return items


def parses(reply: str) -> bool:
    """Whether eval reads the reply's tool call (a malformed one is a ValueError, shown to the model)."""
    try:
        return cof_format.parse_tool_call(reply) is not None
    except ValueError:
        return False


@pytest.mark.parametrize("student", STUDENTS)
def test_a_model_trained_on_the_demo_export_zooms_through_eval_at_small_r_only(demo_run, tmp_path, student):
    build, min_side, steps = STUDENTS[student]
    export = tmp_path / "export"
    assert main_exit(["export", str(demo_run), "--format", "sharegpt", "--target", student, "--out", str(export)]) == 0
    assert main_exit(["validate", str(export)]) == 0  # each exported call re-crops to its exported crop
    samples = zooms_small_answers_large(export)
    assert {sample["id"][-4:] for sample in samples} == {f"r{r}" for r in RESOLUTIONS}, [s["id"] for s in samples]
    corpus = [message["content"] for sample in samples for message in sample["messages"]]
    base = build(tmp_path / "tiny", corpus=corpus * 4, vocab_size=1200, max_pixels=448 * 448)

    out = tmp_path / "finetuned"
    assert main_exit(["finetune", "--data", str(export), "--model", str(base), "--out", str(out), "--full",
                      "--max-steps", str(steps), "--batch-size", "2", "--grad-accum", "1", "--lr", "3e-3",
                      "--image-max-pixels", str(448 * 448), "--image-min-pixels", str(min_side * min_side),
                      "--save-steps", str(10 * steps)]) == 0
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert losses[-1] * 5 <= losses[0], losses

    model = chat_model(ChatModelConfig(backend="transformers", model=str(out / "model"), device="cpu"))
    assert model_target(model).name == student
    items = [*held_out_items(demo_run.parent / "images", 0, json.dumps(samples)),  # the questions not trained on
             *held_out_items(tmp_path / "held-out", 1)]  # a scene of another size, never seen
    settings = EvalSettings(resolutions=list(RESOLUTIONS), max_new_tokens=REPLY_TOKENS, concurrency=1)
    evaluate(model, items, settings, tmp_path / "eval")
    records = {(r.item, r.resolution): r for r in read_jsonl(tmp_path / "eval" / RESULTS, EvalRecord)}
    replies = {key: record.replies for key, record in records.items()}
    assert all(record.error is None for record in records.values()), replies
    calls = [parses(reply) for record in records.values() for reply in record.replies if "<tool_call>" in reply]
    assert calls and all(calls), replies
    small, large = RESOLUTIONS[0], RESOLUTIONS[-1]
    flips = [item.id for item in items  # a parsed call executed (cropped by eval) at small R, an answer at large R
             if parses(records[(item.id, small)].replies[0]) and records[(item.id, small)].zooms
             and not records[(item.id, small)].bad_calls and "<tool_call>" not in records[(item.id, large)].replies[0]
             and cof_format.extract_answer(records[(item.id, large)].replies[0]) is not None]
    assert flips, replies


def main_exit(argv) -> int:
    import sys

    old = sys.argv
    sys.argv = ["mmcof-gen", *argv]
    try:
        main()
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.argv = old
    return 0
