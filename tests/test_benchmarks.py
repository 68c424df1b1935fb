"""`eval --bench` on the benchmarks papers report, in their authors' file layouts (fixtures written here):
HR-Bench's base64 TSV (cycle groups, rows sharing an image by index), MME-RealWorld's JSON (five choices),
TreeBench's TSV with target boxes; each scored against a scripted model whose replies are known, and the
published figures checked against hand-computed ones. Plus detection, subsets, the results table,
`--compare`, and a killed eval that resumes with every item scored once."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmcof_gen import benchmarks, cof_format
from mmcof_gen.benchmarks.embedded import EmbeddedImage, local_image
from mmcof_gen.evaluate import EvalSettings, evaluate_bench
from mmcof_gen.models.chat import ChatModelConfig
from mmcof_gen.tasks.vstar import BenchError
from tests.support.scripted_server import Reply, ScriptedServer

CLI = [sys.executable, "-m", "mmcof_gen.cli"]
SIZE = 448  # every fixture image: its R=224 frame is 224x224, so frame boxes x 2 are original-image boxes


def png_base64(colour: tuple[int, int, int], text: str = "") -> str:
    image = Image.new("RGB", (SIZE, SIZE), colour)
    ImageDraw.Draw(image).text((SIZE // 3, SIZE // 2), text, fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_tsv(path: Path, header: list[str], rows: list[dict]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(column, "") for column in header])
    return path


# HR-Bench: (index, category, cycle_category, answer, what the model replies, what the judge says)
# rows 1-3 share row 0's image and rows 5-7 row 4's, by index, as VLMEvalKit TSVs do
HRBENCH = [
    (0, "FSP", "cycle_1", "A", "A", None),
    (1, "FSP", "cycle_1", "B", "A", None),
    (2, "FCP", "cycle_1", "C", "(C) the third", None),
    (3, "FCP", "cycle_1", "D", "the blue car on the left", "Yes, it matches."),
    (4, "FSP", "cycle_2", "A", "A", None),
    (5, "FSP", "cycle_2", "B", "B.", None),
    (6, "FCP", "cycle_2", "C", "D", None),
    (7, "FCP", "cycle_2", "D", "probably the truck", "no"),
]
HRBENCH_HEADER = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


def write_hrbench(path: Path, count: int | None = None) -> Path:
    """HR-Bench's TSV; `count` rows of the same pattern (for the kill test) instead of the eight above."""
    specs = HRBENCH if count is None else [(i, "FSP", f"cycle_{i % 4}", "A", "A", None) for i in range(count)]
    rows = []
    for index, category, cycle, answer, _, _ in specs:
        shared = index - index % 4
        image = png_base64((40 * (shared % 6), 90, 160), f"item {shared}") if index == shared else str(shared)
        question = f"What is shown at item {index}?" + ('\n(a "quoted"\tnote)' if index == 2 else "")  # csv quotes it
        rows.append({"index": index, "question": question, "answer": answer,
                     "category": category, "cycle_category": cycle, "image": image,
                     "A": "the first", "B": "the second", "C": "the third", "D": "the fourth"})
    return write_tsv(path, HRBENCH_HEADER, rows)


def item_number(body: dict) -> int | None:
    """The `item N` of the question a chat request asks or a judge request judges (None: the image-token probe)."""
    text = json.dumps(body["messages"][:2])
    found = re.search(r"item (\d+)\?", text)
    return int(found.group(1)) if found else None


def answering(replies: dict[int, str], zooms: dict[int, list] | None = None):
    """A scripted model: zooms on each box of `zooms[n]` in turn, then answers `replies[n]`."""
    zooms = zooms or {}

    def reply(body: dict) -> Reply:
        number = item_number(body)
        if number is None:
            return Reply("ok")
        turn = sum(m["role"] == "assistant" for m in body["messages"])
        boxes = zooms.get(number, [])
        if turn < len(boxes):
            return Reply(cof_format.zoom_turn("look closer", boxes[turn]))
        return Reply(cof_format.answer_turn("found it", replies[number]))

    return reply


def openai(server: ScriptedServer) -> ChatModelConfig:
    return ChatModelConfig(backend="openai", base_url=server.url, model="scripted-model", timeout=10.0,
                           backoff_seconds=0.01, max_backoff_seconds=0.02)


def run_eval(bench: Path, out: Path, server: ScriptedServer, judge: ScriptedServer | None = None, **kwargs) -> dict:
    return evaluate_bench(bench, out, EvalSettings(resolutions=[224]), openai(server),
                          openai(judge) if judge else None, **kwargs)


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


# -- HR-Bench ------------------------------------------------------------------------------------------------

def test_hrbench_tsv_scores_per_category_within_each_cycle_and_averages_over_cycles(tmp_path):
    (tmp_path / "bench").mkdir()
    bench = write_hrbench(tmp_path / "bench" / "hr_bench_4k.tsv")
    replies = {n: spec[4] for n, spec in enumerate(HRBENCH)}
    verdicts = {n: spec[5] for n, spec in enumerate(HRBENCH)}
    with ScriptedServer(answering(replies, {0: [(40, 40, 120, 120)]})) as model, \
            ScriptedServer(lambda body: Reply(verdicts[item_number(body)])) as judge:
        report = run_eval(bench, tmp_path / "out", model, judge)
    # hand-computed as HRBenchDataset.evaluate does: per cycle group, then the mean over the two groups
    # cycle_1: FSP 1/2, FCP 2/2 (row 3 by the judge's yes), all 3/4; cycle_2: FSP 2/2, FCP 0/2, all 2/4
    (row,) = report["benchmark"]["results"]
    assert row["detail"]["cycles"] == {"cycle_1": {"all": 0.75, "FCP": 1.0, "FSP": 0.5},
                                       "cycle_2": {"all": 0.5, "FCP": 0.0, "FSP": 1.0}}
    assert row["table"] == {"FCP": 0.5, "FSP": 0.75, "all": 0.625, "zoom_rate": 0.125}
    assert (row["mode"], row["resolution"], row["n"]) == ("cof", 224, 8)
    assert (report["benchmark"]["name"], report["benchmark"]["title"]) == ("hrbench", "HR-Bench 4K")
    assert "cycle_category" in report["benchmark"]["scoring"]
    records = {r["item"]: r for r in records_of(tmp_path / "out")}
    assert {k: r["method"] for k, r in records.items() if r["method"] != "option"} == {"3": "judge", "7": "judge"}
    assert {(tuple(r["image_size"]), tuple(r["frame_size"])) for r in records.values()} == {((SIZE, SIZE), (224, 224))}
    # the judge saw HR-Bench's own prompt, with the reference as `<letter>. <option text>`
    (prompt,) = [r["messages"][0]["content"] for r in judge.requests if "item 3?" in json.dumps(r)]
    assert prompt.startswith("You are a helpful and precise assistant for checking the quality of the answer. "
                             "Please answer in only yes or no. Given the following question: What is shown at item 3?"
                             "\nOptions:\nA. the first\nB. the second\nC. the third\nD. the fourth\n")
    assert "the fourth\nPlease select the correct answer from the options above. \n, the correct" in prompt
    assert prompt.endswith(", the correct answer is: D. the fourth. Does the following answer correctly answers "
                           "the question, answer:the blue car on the left?")
    assert len(judge.requests) == 2
    # base64 images are decoded for their episode only: nothing was written beside the benchmark
    assert sorted(p.name for p in (tmp_path / "bench").iterdir()) == ["hr_bench_4k.tsv"]
    # the results table, in percent, with the protocol and decoding in its header
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| openai:scripted-model | HR-Bench 4K | cof | 224 | 8 | 50.0 | 75.0 | 62.5 | 12.5 |" in markdown
    assert "- protocol: mmcof" in markdown and '"temperature": 0.0' in markdown
    table = list(csv.reader(line for line in (tmp_path / "out" / "results.csv").read_text().splitlines()
                            if not line.startswith("#")))
    assert table[0] == ["protocol", "decoding", "model", "benchmark", "mode", "R", "n", "FCP", "FSP", "all",
                        "zoom_rate"]
    assert table[1][0] == "mmcof"
    assert table[1][2:] == ["openai:scripted-model", "HR-Bench 4K", "cof", "224", "8", "50.0", "75.0", "62.5", "12.5"]


def test_without_a_judge_an_answer_naming_no_option_is_wrong(tmp_path):
    bench = write_hrbench(tmp_path / "hr_bench_8k.tsv")
    with ScriptedServer(answering({n: spec[4] for n, spec in enumerate(HRBENCH)})) as model:
        report = run_eval(bench, tmp_path / "out", model)
    (row,) = report["benchmark"]["results"]
    # rows 3 (FCP, cycle_1) and 7 are now unmatched and wrong: cycle_1 FCP 1/2, all 2/4
    assert row["table"] == {"FCP": 0.25, "FSP": 0.75, "all": 0.5, "zoom_rate": 0.0}
    assert report["benchmark"]["title"] == "HR-Bench 8K"


def test_embedded_images_resolve_index_references_and_decode_into_a_private_folder(tmp_path):
    bench = write_hrbench(tmp_path / "hr_bench_4k.tsv")
    items = benchmarks.detect(bench).load(bench)
    assert [item.id for item in items] == [str(n) for n in range(8)]
    assert all(isinstance(item.image, EmbeddedImage) for item in items)
    assert items[1].image == items[3].image == items[0].image != items[4].image
    assert (items[3].label, items[3].answer, items[3].group) == ("D", "the fourth", "cycle_1")
    assert items[2].question == 'What is shown at item 2?\n(a "quoted"\tnote)'
    assert items[2].image == items[0].image
    with local_image(items[5].image) as path:
        assert path.parent != tmp_path and Image.open(path).size == (SIZE, SIZE)
    assert not path.exists() and not path.parent.exists()


def test_loading_a_large_tsv_holds_no_image(tmp_path):
    """Twenty rows of 1.2 MB base64 noise: the scan holds one row at a time, the items hold none."""
    import tracemalloc

    import numpy as np

    noise = np.random.default_rng(27).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    rows = [{"index": n, "question": f"What is shown at item {n}?", "answer": "A", "category": "FSP",
             "cycle_category": "cycle_1", "image": image, "A": "x", "B": "y", "C": "z", "D": "w"} for n in range(20)]
    bench = write_tsv(tmp_path / "hr_bench_8k.tsv", HRBENCH_HEADER, rows)
    assert bench.stat().st_size > 20 * len(image)
    tracemalloc.start()
    items = benchmarks.detect(bench).load(bench)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(items) == 20 and items[19].image.length == len(image)
    assert held < 200_000  # the 20 items, no image among them
    assert peak < 4 * len(image)  # one line read and split at a time (3.1x here), never the 33 MB file


def test_parquet_layout_reads_like_the_tsv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    tsv = write_hrbench(tmp_path / "hr_bench_4k.tsv")
    rows = list(csv.DictReader(tsv.open(encoding="utf-8"), delimiter="\t"))
    full = {row["index"]: row["image"] for row in rows if len(row["image"]) > 64}
    for row in rows:
        row["image"] = full.get(row["image"], row["image"])  # the parquet carries each image whole
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hr_bench_4k.parquet", row_group_size=3)
    items = benchmarks.detect(tmp_path / "hr_bench_4k.parquet").load(tmp_path / "hr_bench_4k.parquet")
    assert [(i.id, i.category, i.group, i.answer) for i in items] == \
        [(i.id, i.category, i.group, i.answer) for i in benchmarks.BENCHMARKS["hrbench"].load(tsv)]
    with local_image(items[7].image) as path:
        assert Image.open(path).size == (SIZE, SIZE)


# -- MME-RealWorld -------------------------------------------------------------------------------------------

# (task, subtask, ground truth, reply)
MME = [
    ("Perception", "Monitoring", "A", "A"),
    ("Perception", "Monitoring", "B", "B"),
    ("Perception", "Monitoring", "E", "(E) The image does not feature it."),
    ("Perception", "Monitoring", "C", "D"),
    ("Perception", "Remote Sensing", "D", "D"),
    ("Perception", "Remote Sensing", "A", "E"),
    ("Reasoning", "Diagram and Table", "C", "C"),
    ("Reasoning", "Diagram and Table", "B", "A"),
]


def write_mme(root: Path) -> Path:
    (root / "imgs" / "monitoring").mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE), (30, 60, 90)).save(root / "imgs" / "monitoring" / "m.jpg")
    rows = [{"Question_id": f"{task.lower()}/{subtask}/{n:04d}", "Image": "monitoring/m.jpg",
             "Text": f"What is shown at item {n}?", "Question Type": "Multiple Choice",
             "Answer choices": ["(A) one", "(B) two", "(C) three", "(D) four", "(E) The image does not feature it."],
             "Ground truth": truth, "Task": task, "Subtask": subtask, "Category": "counting"}
            for n, (task, subtask, truth, _) in enumerate(MME)]
    path = root / "MME-RealWorld-Lite.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def test_mme_realworld_json_scores_per_subtask_per_task_and_overall(tmp_path):
    bench = write_mme(tmp_path / "mme")
    with ScriptedServer(answering({n: spec[3] for n, spec in enumerate(MME)})) as model:
        report = run_eval(bench, tmp_path / "out", model)
    (row,) = report["benchmark"]["results"]
    # Perception: Monitoring 3/4, Remote Sensing 1/2 -> Avg 4/6, Avg-C (0.75 + 0.5) / 2; Reasoning 1/2; all 5/8
    assert row["detail"] == {"Perception": {"subtasks": {"Monitoring": 0.75, "Remote Sensing": 0.5},
                                            "Avg": 0.6667, "Avg-C": 0.625},
                             "Reasoning": {"subtasks": {"Diagram and Table": 0.5}, "Avg": 0.5, "Avg-C": 0.5}}
    assert row["table"] == {"Perception Avg": 0.6667, "Perception Avg-C": 0.625, "Reasoning Avg": 0.5,
                            "Reasoning Avg-C": 0.5, "Overall": 0.625, "zoom_rate": 0.0}
    assert report["benchmark"]["title"] == "MME-RealWorld-Lite"
    sent = model.requests[-1]["messages"][1]["content"][1]["text"]
    assert "\n(E) The image does not feature it.\n" in sent  # five choices, each as its text


def test_categories_select_a_task_or_a_subtask_and_limit_cuts_after(tmp_path):
    items = benchmarks.detect(write_mme(tmp_path / "mme")).load(tmp_path / "mme" / "MME-RealWorld-Lite.json")
    assert [i.category for i in benchmarks.select(items, ["Reasoning"])] == ["Reasoning/Diagram and Table"] * 2
    assert len(benchmarks.select(items, ["Perception/Remote Sensing", "Reasoning"], limit=3)) == 3
    with pytest.raises(BenchError, match=r"--categories Perceptoin: not a category of this benchmark; its "
                                         r"categories: Perception, Perception/Monitoring"):
        benchmarks.select(items, ["Perceptoin"])


# -- TreeBench -----------------------------------------------------------------------------------------------

# (category, answer, reply, zooms in FRAME pixels (224x224 frame of a 448x448 image), target boxes in original pixels)
TREE = [
    ("Perception/OCR", "A", "A", [(10, 10, 60, 60)], [[20, 20, 120, 120]]),                  # IoU 1
    ("Perception/Attributes", "B", "A", [(0, 0, 50, 50)], [[0, 0, 100, 200]]),               # IoU 0.5
    ("Reasoning/Ordering", "C", "C", [(100, 100, 150, 150), (0, 150, 50, 200)],
     [[0, 0, 100, 100], [200, 200, 300, 300]]),                                                # (0 + 1) / 2
    ("Reasoning/Ordering", "A", "B", [], [[0, 0, 10, 10]]),                                   # no box: 0
    ("Reasoning/Comparison", "D", "D", [(0, 0, 100, 100)], []),                                # no target, a box: 1
]


def write_treebench(path: Path) -> Path:
    rows = [{"index": n, "image": png_base64((n * 30, 80, 80)), "question": f"What is shown at item {n}?",
             "A": "one", "B": "two", "C": "three", "D": "four", "answer": answer, "category": category,
             "target_instances": json.dumps(targets)} for n, (category, answer, _, _, targets) in enumerate(TREE)]
    return write_tsv(path, ["index", "image", "question", "A", "B", "C", "D", "answer", "category",
                            "target_instances"], rows)


def test_treebench_scores_accuracy_and_the_miou_of_zoom_boxes_in_original_pixels(tmp_path):
    bench = write_treebench(tmp_path / "TreeBench.tsv")
    replies = {n: spec[2] for n, spec in enumerate(TREE)}
    with ScriptedServer(answering(replies, {n: spec[3] for n, spec in enumerate(TREE)})) as model:
        report = run_eval(bench, tmp_path / "out", model)
    (row,) = report["benchmark"]["results"]
    assert row["detail"]["iou"] == {"0": 1.0, "1": 0.5, "2": 0.5, "3": 0.0, "4": 1.0}
    # accuracy 3/5; Perception 1/2, Reasoning 2/3; mIoU (1 + 0.5 + 0.5 + 0 + 1) / 5
    assert row["table"] == {"Overall": 0.6, "mIoU": 0.6, "Perception": 0.5, "Reasoning": 0.6667, "zoom_rate": 0.8}
    assert row["detail"]["subtasks"] == {"Perception/Attributes": 0.0, "Perception/OCR": 1.0,
                                         "Reasoning/Comparison": 1.0, "Reasoning/Ordering": 0.5}
    assert report["benchmark"]["name"] == "treebench" and "mIoU" in report["benchmark"]["scoring"]


# -- detection, the command line, the table --------------------------------------------------------------------

def test_each_layout_is_recognised_and_an_unknown_one_is_one_line_naming_the_formats(tmp_path):
    assert benchmarks.detect(write_hrbench(tmp_path / "hr.tsv")).name == "hrbench"
    assert benchmarks.detect(write_treebench(tmp_path / "tb.tsv")).name == "treebench"
    assert benchmarks.detect(write_mme(tmp_path / "mme")).name == "mme-realworld"
    odd = tmp_path / "odd.csv"
    odd.write_text("a,b\n1,2\n")
    cli = [*CLI, "eval", "--bench", str(odd), "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m",
           "--out", str(tmp_path / "out")]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"mmcof-gen: --bench {odd} is in no layout eval knows; the formats: hrbench (")
    assert all(name in done.stderr for name in benchmarks.BENCHMARKS) and "--bench-format NAME" in done.stderr
    wrong = subprocess.run([*cli, "--bench-format", "hrbnch"], capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "hrbench" in wrong.stderr and "mme-realworld" in wrong.stderr


def test_bench_format_reads_a_file_detection_cannot_tell(tmp_path):
    bench = write_hrbench(tmp_path / "hr_bench_4k.tsv")
    renamed = bench.rename(tmp_path / "hr_bench_4k.dat")
    with pytest.raises(BenchError, match="--bench-format NAME"):
        benchmarks.detect(renamed)
    assert len(benchmarks.detect(renamed, "hrbench").load(renamed)) == 8


def test_eval_command_writes_the_table_and_compare_marks_the_differences(tmp_path):
    bench = write_hrbench(tmp_path / "hr_bench_4k.tsv")
    cli = [*CLI, "eval", "--bench", str(bench), "--resolutions", "224"]
    right = {n: spec[3] for n, spec in enumerate(HRBENCH)}
    with ScriptedServer(answering(right)) as server:
        first = subprocess.run([*cli, "--endpoint", server.url, "--served-model", "m", "--out", str(tmp_path / "a"),
                                "--categories", "FSP"], capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "| openai:m | HR-Bench 4K | cof | 224 | 4 | 100.0 | 100.0 | 0.0 |" in first.stdout
    with ScriptedServer(answering({n: "A" for n in right})) as server:
        second = subprocess.run([*cli, "--endpoint", server.url, "--served-model", "m", "--out", str(tmp_path / "b"),
                                 "--categories", "FSP"], capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    compared = subprocess.run([*CLI, "eval", "--compare", str(tmp_path / "a"), str(tmp_path / "b")],
                              capture_output=True, text=True, timeout=120)
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    # FSP rows: 0 (A), 1 (B), 4 (A), 5 (B): always-A gets 2 of 4, one per cycle
    assert re.search(r"^HR-Bench 4K cof R=224 FSP\s+100\.0\s+50\.0\s+-50\.00 \*$", compared.stdout, re.M), lines
    assert re.search(r"^HR-Bench 4K cof R=224 n\s+4\s+4\s+\+0\.00$", compared.stdout, re.M), lines


# -- a killed eval resumes -----------------------------------------------------------------------------------

def test_a_killed_eval_resumes_with_every_item_scored_exactly_once(tmp_path):
    bench = write_hrbench(tmp_path / "hr_bench_4k.tsv", count=200)
    out = tmp_path / "out"
    rng = random.Random(27)
    with ScriptedServer(lambda body: Reply(cof_format.answer_turn("x", "A"), delay=0.02)) as server:
        command = [*CLI, "eval", "--bench", str(bench), "--out", str(out), "--endpoint", server.url,
                   "--served-model", "m", "--resolutions", "224", "--concurrency", "4"]
        kills = 0
        for threshold in sorted(rng.sample(range(10, 190), 3)):
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            results = out / "results.jsonl"
            while process.poll() is None and (results.read_bytes().count(b"\n") if results.exists() else 0) < threshold:
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
            kills += process.wait() == -signal.SIGKILL
        assert kills == 3
        killed_at = (out / "results.jsonl").read_bytes().count(b"\n")
        finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    ids = [record["id"] for record in records_of(out)]
    assert 0 < killed_at < 200
    assert len(ids) == len(set(ids)) == 200
    report = json.loads((out / "report.json").read_text())
    assert report["benchmark"]["results"][0]["n"] == 200
    assert report["benchmark"]["results"][0]["table"]["all"] == 1.0
    assert not [p for p in os.listdir(tmp_path) if p not in ("hr_bench_4k.tsv", "out")]


# -- a real vLLM server ----------------------------------------------------------------------------------------

VLLM_URL = os.environ.get("MMCOF_VLLM_URL", "")
VLLM_MODEL = os.environ.get("MMCOF_VLLM_MODEL", "")


@pytest.mark.vllm
@pytest.mark.skipif(not VLLM_URL, reason="needs a vLLM server: run `make test-vllm`")
def test_hrbench_layout_against_the_vllm_endpoint(tmp_path):
    """Random weights: no request refused, every item recorded without error, the report names the
    benchmark, its scoring and the R of each row."""
    bench = write_hrbench(tmp_path / "hr_bench_4k.tsv")
    out = tmp_path / "eval"
    done = subprocess.run([*CLI, "eval", "--bench", bench, "--out", out, "--endpoint", VLLM_URL, "--served-model",
                           VLLM_MODEL, "--resolutions", "224", "--baseline-no-zoom"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    records = records_of(out)
    assert sorted((r["item"], r["mode"]) for r in records) == sorted((str(n), m) for n in range(8)
                                                                     for m in ("cof", "no_zoom"))
    assert all(r["error"] is None and r["generations"] >= 1 for r in records)
    report = json.loads((out / "report.json").read_text())
    assert (report["benchmark"]["name"], report["benchmark"]["title"]) == ("hrbench", "HR-Bench 4K")
    assert "cycle_category" in report["benchmark"]["scoring"]
    assert sorted((r["mode"], r["resolution"]) for r in report["benchmark"]["results"]) == [("cof", 224),
                                                                                            ("no_zoom", 224)]
    assert "HR-Bench 4K" in (out / "results.md").read_text()
