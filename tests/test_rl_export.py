"""`export --format verl / swift-grpo`: a run's tasks as RL prompts, their measured difficulty, the pass-rate band,
and verl's own RLHFDataset reading the parquet."""

import base64
import json
import os
import re
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmcof_gen import cof_format
from mmcof_gen.export import FORMATS, export, rl
from mmcof_gen.imaging import image_sha256
from mmcof_gen.models.chat import ChatModelConfig
from mmcof_gen.schema import short_hash
from mmcof_gen.targets import QWEN3_SYSTEM_PROMPT, qwen3_size
from tests.support.runs import make_trajectory, write_noise_image, write_run
from tests.support.scripted_server import Reply, ScriptedServer
from tests.test_eval import images_of

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["red", "blue", "green"]


def synthesized(trajectory, source="ocr-synthesis", agreement=None):
    return trajectory.model_copy(update={"task": trajectory.task.model_copy(
        update={"source": source, "agreement": agreement})})


@pytest.fixture
def run(tmp_path):
    """Five tasks: `sign` solved at 448 with two zooms and directly at 672; `door` given (source "test") and
    rejected at its only R; `ocr` synthesized and rejected (untrusted: skipped); `agreed` synthesized, rejected,
    but passed the consistency check; `colour` a multiple-choice question solved directly."""
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    write_noise_image(images / "b.png", (500, 500), seed=2)
    sign = [make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150), (50, 40, 120, 90)]),
            make_trajectory(images, "a.png", 672)]
    door = make_trajectory(images, "b.png", 448, question="What is on the door?", answer="PUSH",
                           status="rejected", correct=False)
    ocr = synthesized(make_trajectory(images, "b.png", 448, question="What does the label say?", answer="A4",
                                      status="rejected", correct=False))
    agreed = synthesized(make_trajectory(images, "b.png", 448, question="What is the number?", answer="12",
                                         status="rejected", correct=False), "vlm-synthesis", 0.8)
    colour = make_trajectory(images, "b.png", 448, question="What colour is the cup?", answer="blue")
    colour = colour.model_copy(update={"task": colour.task.model_copy(update={"options": OPTIONS})})
    trajectories = [*sign, door, ocr, agreed, colour]
    return write_run(tmp_path / "run", images, trajectories), trajectories


def parquet_rows(folder):
    return [row for name in ("train", "test") if (folder / f"{name}.parquet").exists()
            for row in pq.read_table(folder / f"{name}.parquet").to_pylist()]


def test_registry_holds_both_rl_formats_and_the_cli_offers_them():
    assert FORMATS["verl"] is rl.VERL and FORMATS["swift-grpo"] is rl.SWIFT_GRPO
    from mmcof_gen.cli import EXPORT_FORMATS
    assert EXPORT_FORMATS is FORMATS  # the CLI's --format choices are the registry's names


def test_synthesized_sources_are_the_synthesizers_own():
    from mmcof_gen.tasks import vlm_writer
    assert vlm_writer.SOURCE in rl.SYNTHESIZED
    assert 'source="ocr-synthesis"' in (REPO / "mmcof_gen" / "tasks" / "text_questions.py").read_text()


def test_verl_rows_are_the_cof_recipe_layout_one_per_trusted_task(tmp_path, run):
    run_dir, trajectories = run
    sign, sign672, door, ocr, agreed, colour = trajectories
    report = export(run_dir, "verl", tmp_path / "out", rl_options=rl.RLOptions(test_fraction=0.0))
    rows = parquet_rows(tmp_path / "out")

    assert (report["tasks"], report["samples"], report["train"], report["test"], report["skipped"]) == (5, 4, 4, 0, 1)
    assert report["skipped_tasks"] == [{"id": ocr.task.id, "reason": "untrusted: a synthesized answer no chain verified"}]
    assert report["data_files"] == {"train": "train.parquet"}
    assert "This export has no test split (`--test-fraction 0.0` of 4 prompts)" in (tmp_path / "out" / "README.md").read_text()
    assert [row["extra_info"]["task_id"] for row in rows] == [t.task.id for t in (sign, door, agreed, colour)]
    assert [row["extra_info"]["trust"] for row in rows] == ["verified", "given", "consistency", "verified"]
    for n, (row, task) in enumerate(zip(rows, (sign.task, door.task, agreed.task, colour.task))):
        assert set(row) == {"data_source", "agent_name", "prompt", "images", "ability", "reward_model", "extra_info"}
        assert (row["data_source"], row["agent_name"], row["ability"]) == ("mmcof", "tool_agent", "vision")
        assert row["prompt"] == [{"role": "system", "content": cof_format.SYSTEM_PROMPT},
                                 {"role": "user", "content": cof_format.user_prompt(task.question, task.options)}]
        assert sum(m["content"].count("<image>") for m in row["prompt"]) == len(row["images"]) == 1
        uri = row["images"][0]["image"]
        path = uri.removeprefix("file://")
        assert uri.startswith("file:///") and Path(path).is_file()
        info = row["extra_info"]
        assert info["tools_kwargs"] == {"image_zoom_in_tool": {
            "create_kwargs": {"image": uri, "image_path": path, "question": task.question,
                              "ground_truth": row["reward_model"]["ground_truth"]},
            "execute_kwargs": {"image_path": path}}}
        assert (info["split"], info["index"], info["need_tools_kwargs"]) == ("train", n, True)
        assert info["answer"] == row["reward_model"]["ground_truth"] and row["reward_model"]["style"] == "rule"

    # the image is the working frame at the task's largest measured R
    sign_row = rows[0]
    with Image.open(sign_row["images"][0]["image"].removeprefix("file://")) as image:
        assert image_sha256(image.convert("RGB")) == sign672.view.frame_sha256
    assert (sign_row["extra_info"]["resolution"], sign_row["extra_info"]["image_size"]) == (672, [588, 392])
    assert sign_row["reward_model"]["ground_truth"] == "EXIT"
    # multiple choice keeps the letter convention; the option text rides along for the reward
    assert rows[3]["reward_model"]["ground_truth"] == "B"
    assert (rows[3]["extra_info"]["options"], rows[3]["extra_info"]["option_text"]) == (OPTIONS, "blue")


def test_difficulty_is_measured_per_task_and_r_and_summarised(tmp_path, run):
    run_dir, _ = run
    report = export(run_dir, "verl", tmp_path / "out")
    rows = {row["extra_info"]["question"]: row["extra_info"]["difficulty"] for row in parquet_rows(tmp_path / "out")}
    sign = rows["What does the sign say?"]
    assert sign["per_resolution"] == [
        {"resolution": 448, "status": "accepted", "reason": None, "direct": False, "zooms": 2,
         "boxes": [[10, 10, 200, 150], [50, 40, 120, 90]], "answered": "EXIT"},
        {"resolution": 672, "status": "accepted", "reason": None, "direct": True, "zooms": 0, "boxes": [],
         "answered": "EXIT"}]
    assert (sign["measured"], sign["solved"], sign["direct_at"], sign["min_zooms"]) == (2, 2, [672], 0)
    door = rows["What is on the door?"]
    assert door["per_resolution"][0] | {"answered": None} == {
        "resolution": 448, "status": "rejected", "reason": "not found: no text in the region", "direct": False,
        "zooms": None, "boxes": [], "answered": None}
    assert (door["solved"], door["min_zooms"], door["pass_rate"]) == (0, None, None)
    assert report["difficulty"] == {
        "per_resolution": {"448": {"direct": 1, "zoom": 1, "rejected": 2}, "672": {"direct": 1, "zoom": 0, "rejected": 0}},
        "min_zooms": {"0": 2, "never": 2}, "trust": {"verified": 2, "given": 1, "consistency": 1}}
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| 448 | 1 | 1 | 2 |" in card and "Fewest zooms a verified chain needed, tasks: 0: 2, never: 2." in card
    assert "custom_reward_function.name=compute_score" in card


def test_swift_grpo_rows_carry_messages_images_solution_and_the_same_extra_info(tmp_path, run):
    run_dir, _ = run
    export(run_dir, "verl", tmp_path / "verl", rl_options=rl.RLOptions(test_fraction=0.0))
    report = export(run_dir, "swift-grpo", tmp_path / "swift", rl_options=rl.RLOptions(test_fraction=0.0))
    rows = [json.loads(line) for line in (tmp_path / "swift" / "train.jsonl").read_text().splitlines()]
    verl_rows = parquet_rows(tmp_path / "verl")
    assert report["data_files"] == {"train": "train.jsonl"} and len(rows) == 4
    for row, twin in zip(rows, verl_rows):
        assert set(row) == {"messages", "images", "solution", "reward_model", "extra_info", "data_source"}
        assert row["messages"] == twin["prompt"]
        assert row["solution"] == row["reward_model"]["ground_truth"] == twin["reward_model"]["ground_truth"]
        assert Path(row["images"][0]).is_file() and Path(row["images"][0]).is_absolute()
        # one builder, so the same facts (only the image folder differs); and parquet's spelled-out schema loses
        # no field of it
        assert {k: v for k, v in row["extra_info"].items() if k != "tools_kwargs"} == \
            {k: v for k, v in twin["extra_info"].items() if k != "tools_kwargs"}


def test_embedded_images_are_the_frame_png_in_both_layouts(tmp_path, run):
    run_dir, trajectories = run
    options = rl.RLOptions(embed_images=True, test_fraction=0.0)
    export(run_dir, "verl", tmp_path / "verl", rl_options=options)
    export(run_dir, "swift-grpo", tmp_path / "swift", rl_options=options)
    verl_row = parquet_rows(tmp_path / "verl")[0]
    swift_row = json.loads((tmp_path / "swift" / "train.jsonl").read_text().splitlines()[0])
    png = verl_row["images"][0]["bytes"]
    assert set(verl_row["images"][0]) == {"bytes"}  # no "image" key: verl would try to fetch it
    assert image_sha256(Image.open(BytesIO(png)).convert("RGB")) == trajectories[1].view.frame_sha256
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    assert swift_row["images"] == [uri]
    assert verl_row["extra_info"]["tools_kwargs"]["image_zoom_in_tool"]["create_kwargs"]["image"] == uri
    assert verl_row["extra_info"]["tools_kwargs"]["image_zoom_in_tool"]["execute_kwargs"] == {"image_path": None}
    assert not (tmp_path / "verl" / "images").exists()


def test_split_is_a_stable_hash_of_the_task_id(tmp_path, run):
    run_dir, trajectories = run
    report = export(run_dir, "swift-grpo", tmp_path / "out", rl_options=rl.RLOptions(test_fraction=0.5))
    expected = {t.task.id: "test" if int(short_hash("split", t.task.id), 16) < 0.5 * 16 ** 16 else "train"
                for t in trajectories if t.task.question != "What does the label say?"}
    got = {}
    for split in report["data_files"]:
        for n, line in enumerate((tmp_path / "out" / f"{split}.jsonl").read_text().splitlines()):
            info = json.loads(line)["extra_info"]
            assert (info["split"], info["index"]) == (split, n)
            got[info["task_id"]] = split
    assert got == expected
    everything = export(run_dir, "swift-grpo", tmp_path / "all", rl_options=rl.RLOptions(test_fraction=1.0))
    assert (everything["train"], everything["test"], everything["data_files"]) == (0, 4, {"test": "test.jsonl"})


RIGHT = {"What does the sign say?": "EXIT", "What is on the door?": "PUSH", "What is the number?": "12",
         "What colour is the cup?": "(B) blue"}
MC = {"What colour is the cup?"}


def policy(pass_counts: dict[str, int]):
    """A scripted policy: the n-th episode of a question answers right while n < its count, wrong after, so each
    question's pass rate over k samples is count/k. Every reply is a final answer (episodes of one turn)."""
    seen: dict[str, int] = {}

    def reply(body: dict) -> Reply:
        text = next(part["text"] for part in body["messages"][1]["content"] if part["type"] == "text")
        question = next(q for q in pass_counts if q in text)
        n = seen[question] = seen.get(question, 0) + 1
        answer = RIGHT[question] if n <= pass_counts[question] else "A" if question in MC else "nothing"
        return Reply(cof_format.answer_turn("looked", answer))
    return reply


def test_keep_pass_rate_keeps_exactly_the_tasks_in_the_band(tmp_path, run):
    run_dir, trajectories = run
    counts = {"What does the sign say?": 4, "What is on the door?": 1, "What is the number?": 3,
              "What colour is the cup?": 0}  # pass rates 1.0, 0.25, 0.75, 0.0
    with ScriptedServer(policy(counts)) as server:
        settings = rl.PassRate(ChatModelConfig(base_url=server.url, model="scripted-model"), samples=4,
                               band=rl.parse_band("0.1..0.9"))
        report = export(run_dir, "swift-grpo", tmp_path / "out",
                        rl_options=rl.RLOptions(test_fraction=0.0, pass_rate=settings))
    assert len(server.requests) == 4 * 4 and {r["temperature"] for r in server.requests} == {1.0}
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [(r["extra_info"]["question"], r["extra_info"]["difficulty"]["pass_rate"]) for r in rows] == [
        ("What is on the door?", 0.25), ("What is the number?", 0.75)]
    assert all(r["extra_info"]["difficulty"]["samples"] == 4 for r in rows)
    by_id = {t.task.question: t.task.id for t in trajectories}
    assert report["skipped_tasks"][1:] == [
        {"id": by_id["What does the sign say?"], "reason": "pass rate outside the band", "pass_rate": 1.0},
        {"id": by_id["What colour is the cup?"], "reason": "pass rate outside the band", "pass_rate": 0.0}]
    assert report["skip_reasons"] == {"untrusted: a synthesized answer no chain verified": 1,
                                      "pass rate outside the band": 2}
    assert report["pass_rate"] == {"model": "scripted-model", "samples": 4, "temperature": 1.0, "band": [0.1, 0.9],
                                   "histogram": {"0.0": 1, "0.2": 1, "0.7": 1, "0.9": 1}}


def test_rl_exports_for_qwen3_vl_are_what_a_qwen3_vl_student_reads(tmp_path, run):
    """`--target qwen3-vl` on an RL format: the system prompt declares Qwen3-VL's own zoom tool (boxes in 0-1000),
    `images[0]` is the frame as its processor sizes it (factor 32, not the run's factor-28 frame), and the pass
    rate is measured by eval's loop as a Qwen3-VL student is evaluated (the same prompt, the same frame)."""
    run_dir, _ = run
    counts = {"What does the sign say?": 1, "What is on the door?": 1, "What is the number?": 1,
              "What colour is the cup?": 1}
    with ScriptedServer(policy(counts)) as server:
        settings = rl.PassRate(ChatModelConfig(base_url=server.url, model="scripted-model"), samples=1)
        report = export(run_dir, "swift-grpo", tmp_path / "swift", target="qwen3-vl",
                        rl_options=rl.RLOptions(test_fraction=0.0, pass_rate=settings))
    export(run_dir, "verl", tmp_path / "verl", rl_options=rl.RLOptions(test_fraction=0.0), target="qwen3-vl")
    verl = parquet_rows(tmp_path / "verl")
    swift = [json.loads(line) for line in (tmp_path / "swift" / "train.jsonl").read_text().splitlines()]

    assert report["target"] == "qwen3-vl" and len(verl) == len(swift) == 4
    assert {row["prompt"][0]["content"] for row in verl} == {row["messages"][0]["content"] for row in swift} == {
        QWEN3_SYSTEM_PROMPT}
    originals = {"a.png": (600, 400), "b.png": (500, 500)}
    for row in swift:
        with Image.open(row["images"][0]) as image:
            size = image.size
        info = row["extra_info"]
        image_file = "a.png" if info["question"] == "What does the sign say?" else "b.png"
        assert size == tuple(info["image_size"]) == qwen3_size(*originals[image_file], info["resolution"])
        assert size[0] % 32 == 0 and size[1] % 32 == 0
    assert {request["messages"][0]["content"] for request in server.requests} == {QWEN3_SYSTEM_PROMPT}
    assert sorted(images_of(request)[0].size for request in server.requests) == sorted(
        tuple(row["extra_info"]["image_size"]) for row in swift)


@pytest.mark.parametrize("text, message", [
    ("0.9..0.1", "--keep-pass-rate '0.9..0.1': need 0 <= LO <= HI <= 1; pass e.g. 0.1..0.9"),
    ("half", "--keep-pass-rate 'half' is not LO..HI; pass e.g. 0.1..0.9"),
])
def test_a_bad_band_is_named(text, message):
    with pytest.raises(rl.ConfigError, match=re.escape(message)):
        rl.parse_band(text)


def cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mmcof_gen.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_exports_tasks_and_refuses_flags_that_do_not_apply(tmp_path, run):
    run_dir, _ = run
    done = cli("export", run_dir, "--out", tmp_path / "out", "--format", "verl", "--test-fraction", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"4 prompts (train 4, test 0) of 5 tasks, 1 skipped; {tmp_path / 'out' / 'train.parquet'}\n"
    lonely = cli("export", run_dir, "--out", tmp_path / "o2", "--format", "verl", "--keep-pass-rate", "0.1..0.9",
                 cwd=tmp_path)
    assert (lonely.returncode, lonely.stderr.strip()) == (
        2, "mmcof-gen: --keep-pass-rate needs --pass-rate-model URL NAME to measure the pass rates")
    sft = cli("export", run_dir, "--out", tmp_path / "o3", "--embed-images", cwd=tmp_path)
    assert (sft.returncode, sft.stderr.strip()) == (
        2, "mmcof-gen: --embed-images, --test-fraction and --pass-rate-model apply to --format verl or swift-grpo, "
           "not sharegpt; drop them")


def test_every_row_has_what_verls_rlhf_dataset_needs(tmp_path, run):
    """The schema verl's `RLHFDataset` (verl/utils/dataset/rl_dataset.py, volcengine/verl b178a3cd, v0.9.1) reads:
    `_build_messages` splits each string content on `<image>` and asserts as many placeholders as `images`, each
    image a dict whose `bytes` it opens or whose other keys (`image`) go to qwen_vl_utils; `__getitem__` takes
    `extra_info.index`, `extra_info.tools_kwargs`, `need_tools_kwargs`; the reward manager reads
    `reward_model.ground_truth` and `data_source`. The real class reads the file in the test below."""
    run_dir, _ = run
    for embed in (False, True):
        out = tmp_path / f"out{embed}"
        export(run_dir, "verl", out, rl_options=rl.RLOptions(embed_images=embed, test_fraction=0.5))
        # verl concatenates the files it is given: train and test must have one schema
        assert pq.read_schema(out / "train.parquet") == pq.read_schema(out / "test.parquet")
        for row in parquet_rows(out):
            segments = [s for m in row["prompt"] for s in re.split("(<image>|<video>)", m["content"]) if s]
            assert segments.count("<image>") == len(row["images"]) == 1 and "<video>" not in segments
            assert set(row["images"][0]) == ({"bytes"} if embed else {"image"})
            assert isinstance(row["extra_info"]["index"], int) and row["extra_info"]["need_tools_kwargs"] is True
            assert row["extra_info"]["tools_kwargs"]["image_zoom_in_tool"]["create_kwargs"]["image"]
            assert row["reward_model"]["ground_truth"].strip() and row["data_source"]


VERL_PYTHON = os.environ.get("MMCOF_VERL_PYTHON")


@pytest.mark.skipif(not VERL_PYTHON, reason="MMCOF_VERL_PYTHON (a python with verl installed) is not set")
@pytest.mark.parametrize("embed", [False, True])
def test_verls_rlhf_dataset_reads_every_row(tmp_path, run, embed):
    run_dir, _ = run
    export(run_dir, "verl", tmp_path / "out", rl_options=rl.RLOptions(embed_images=embed, test_fraction=0.5))
    checked = subprocess.run([VERL_PYTHON, REPO / "tests" / "verl" / "check.py", tmp_path / "out", tmp_path],
                             capture_output=True, text=True, timeout=900, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert (result["rows"], result["read"], result["failures"]) == (4, 4, [])


def test_verl_without_pyarrow_is_one_line_naming_the_extra_and_swift_grpo_needs_none(tmp_path, run):
    from tests.test_cli import run_without

    run_dir, _ = run
    result = run_without(["pyarrow"], "export", run_dir, "--out", tmp_path / "v", "--format", "verl")
    assert (result.returncode, result.stderr) == (
        2, "mmcof-gen: export --format verl needs the [data] extra: pip install 'mmcof-gen[data]'\n")
    assert not (tmp_path / "v").exists()
    result = run_without(["pyarrow", "datasets"], "export", run_dir, "--out", tmp_path / "s", "--format", "swift-grpo")
    assert result.returncode == 0, result.stderr


def test_cli_pass_rate_flags_reach_the_served_policy(tmp_path, run):
    run_dir, _ = run
    counts = {"What does the sign say?": 2, "What is on the door?": 1, "What is the number?": 0,
              "What colour is the cup?": 2}
    with ScriptedServer(policy(counts)) as server:
        done = cli("export", run_dir, "--out", tmp_path / "out", "--format", "swift-grpo", "--test-fraction", "0",
                   "--pass-rate-model", server.url, "scripted-model", "--samples", "2", "--keep-pass-rate", "0.5..1",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(server.requests) == 4 * 2 and {r["model"] for r in server.requests} == {"scripted-model"}
    rows = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert [(r["extra_info"]["question"], r["extra_info"]["difficulty"]["pass_rate"]) for r in rows] == [
        ("What does the sign say?", 1.0), ("What is on the door?", 0.5), ("What colour is the cup?", 1.0)]
    assert "## Pass rate\n2 samples at temperature 1.0 of `scripted-model`" in (tmp_path / "out" / "README.md").read_text()


def test_check_export_passes_both_layouts_and_names_each_defect(tmp_path, run):
    run_dir, _ = run
    for fmt, embed in (("verl", False), ("verl", True), ("swift-grpo", False), ("swift-grpo", True)):
        out = tmp_path / f"{fmt}{embed}"
        export(run_dir, fmt, out, rl_options=rl.RLOptions(embed_images=embed, test_fraction=0.5))
        assert rl.check_export(out) == []
    out = tmp_path / "swift-grpoFalse"
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    rows[0]["images"] = [str(out / "images" / "gone.png")]
    rows[1]["reward_model"]["ground_truth"] = " "
    rows[1]["messages"][1]["content"] = rows[1]["messages"][1]["content"].replace("<image>", "")
    (out / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    problems = rl.check_export(out)
    assert len(problems) == 3
    assert problems[0].startswith(f"train.jsonl row 0: image '{out / 'images' / 'gone.png'}' does not open")
    assert problems[1:] == ["train.jsonl row 1: the <image> placeholders do not match its 1 images",
                            "train.jsonl row 1: empty ground truth"]


@pytest.mark.parametrize("answer, source, agreement, solved, expected", [
    ("EXIT", "ocr-synthesis", None, 1, ("verified", None)),
    ("EXIT", "vlm-synthesis", 0.8, 0, ("consistency", None)),
    ("EXIT", "vstar", None, 0, ("given", None)),
    ("EXIT", "ocr-synthesis", None, 0, (None, rl.UNTRUSTED)),
    (" ", "vstar", None, 1, (None, "no ground truth")),
    (None, "vstar", None, 0, (None, "no ground truth")),
])
def test_trust_of_a_ground_truth(tmp_path, answer, source, agreement, solved, expected):
    task = make_trajectory(write_noise_image(tmp_path / "a.png", (200, 200), seed=1).parent, "a.png", 448).task
    task = task.model_copy(update={"answer": answer, "source": source, "agreement": agreement})
    assert rl.trust(task, {"solved": solved}) == expected
