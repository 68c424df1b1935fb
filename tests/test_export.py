import json
import re

import pytest
from PIL import Image

from mmcof_gen import cof_format
from mmcof_gen.budget import TokenBudget, image_tokens
from mmcof_gen.export import FORMATS, export
from mmcof_gen.export import files as files_module
from mmcof_gen.imaging import crop_zoom, image_sha256, image_to_png_bytes
from mmcof_gen.store import StoreError
from mmcof_gen.validate import read_records
from tests.support.runs import count_frame_rebuilds, make_trajectory, write_noise_image, write_run

TWO_ZOOMS = [(10, 10, 200, 150), (50, 40, 120, 90)]


@pytest.fixture
def run(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)  # frame at R=448: 532x364
    write_noise_image(images / "b.png", (500, 500), seed=2)  # frame at R=448: 448x448
    trajectories = [
        make_trajectory(images, "a.png", 448, boxes=TWO_ZOOMS),
        make_trajectory(images, "a.png", 448, question="What is on the door?"),  # direct, same frame
        make_trajectory(images, "b.png", 448, boxes=[(100, 100, 200, 200)]),
        make_trajectory(images, "b.png", 448, question="Rejected?", status="rejected", correct=False),
    ]
    return write_run(tmp_path / "run", images, trajectories), trajectories


def load_images(folder, sample):
    return [Image.open(folder / path).convert("RGB") for path in sample["images"]]


def test_sharegpt_round_trip_recrops_every_tool_call_pixel_identically(tmp_path, run):
    run_dir, trajectories = run
    report = export(run_dir, "sharegpt", tmp_path / "out")
    samples = json.loads((tmp_path / "out" / "mmcof.json").read_text())

    assert [s["id"] for s in samples] == [t.id for t in trajectories[:3]]  # only accepted ones
    assert (report["samples"], report["direct"], report["zoom"], report["not_accepted"]) == (3, 1, 2, 1)
    for sample, trajectory in zip(samples, trajectories):
        assert sample["messages"] == cof_format.trajectory_messages(trajectory)
        images = load_images(tmp_path / "out", sample)
        calls = [cof_format.parse_tool_call(m["content"]) for m in sample["messages"] if m["role"] == "assistant"]
        boxes = [call["arguments"]["bbox_2d"] for call in calls if call]
        assert len(images) == 1 + len(boxes) == sum(m["content"].count("<image>") for m in sample["messages"])
        assert image_sha256(images[0]) == trajectory.view.frame_sha256
        for k, box in enumerate(boxes, 1):
            assert image_sha256(crop_zoom(images[0], box)) == image_sha256(images[k])
    assert json.loads((tmp_path / "out" / "dataset_info.json").read_text()) == {"mmcof": {
        "file_name": "mmcof.json", "formatting": "sharegpt", "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                 "system_tag": "system"}}}


def test_reexport_is_idempotent_and_a_shared_frame_is_written_once(tmp_path, run):
    run_dir, _ = run
    first = export(run_dir, "sharegpt", tmp_path / "out")
    data = (tmp_path / "out" / "mmcof.json").read_bytes()
    files = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert first["images"] == 3 + 1 + 2 and first["image_files"] == len(files) == 5  # frame of a.png shared
    again = export(run_dir, "sharegpt", tmp_path / "out")
    assert again["images_written"] == 0
    assert (tmp_path / "out" / "mmcof.json").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == files  # no temporary files left


def test_pixels_are_encoded_once_and_not_at_all_when_their_file_exists(tmp_path, run, monkeypatch):
    run_dir, _ = run
    encoded = []
    monkeypatch.setattr(files_module, "image_to_png_bytes",
                        lambda image, level: encoded.append((image_sha256(image), level)) or image_to_png_bytes(image, level))
    first = export(run_dir, "sharegpt", tmp_path / "out")
    assert len(encoded) == len(set(encoded)) == first["image_files"] == first["images_written"] == 5
    assert {level for _, level in encoded} == {files_module.PNG_LEVEL}
    encoded.clear()
    export(run_dir, "sharegpt", tmp_path / "out")
    assert encoded == []


@pytest.mark.parametrize("fmt, window, rebuilds", [("sharegpt", None, 2), ("sharegpt", 2, 4), ("parquet", None, 4)],
                         ids=["one window", "window of 2", "parquet"])
def test_trajectories_of_an_image_far_apart_share_a_decode_and_keep_their_order(tmp_path, monkeypatch, fmt, window,
                                                                                 rebuilds):
    # a run of several workers interleaves images: a window of the run is replayed image by image, so each
    # frame is rebuilt once per window (a window of 2 is as good as none: once per batch of 8; Parquet,
    # whose results hold PNG bytes, keeps no window), and the samples still come out in the run's order
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (600, 400), seed=1)
    write_noise_image(images / "b.png", (500, 500), seed=2)
    spread = [make_trajectory(images, name, 448, boxes=[(100, 100, 200, 200)], question=f"Which sign, number {n}?")
              for n in range(6) for name in ("a.png", "b.png")]
    run_dir = write_run(tmp_path / "run", images, spread)
    reference = export(run_dir, fmt, tmp_path / "reference", jobs=2)
    rebuilt = count_frame_rebuilds(monkeypatch)
    if window:
        monkeypatch.setattr("mmcof_gen.export.WINDOW", window)

    report = export(run_dir, fmt, tmp_path / "out")

    assert len(rebuilt) == rebuilds and {name for name, _ in rebuilt} == {"a.png", "b.png"}
    data = tmp_path / "out" / FORMATS[fmt].data_file
    assert [record["id"] for record in read_records(data)] == [t.id for t in spread]
    assert report["samples"] == reference["samples"] == 12
    assert data.read_bytes() == (tmp_path / "reference" / FORMATS[fmt].data_file).read_bytes()


def test_json_and_parquet_exports_load_with_datasets(tmp_path, run):
    from datasets import load_dataset

    run_dir, trajectories = run
    export(run_dir, "sharegpt", tmp_path / "json")
    export(run_dir, "parquet", tmp_path / "parquet")
    cache = str(tmp_path / "hf-cache")
    rows = load_dataset("json", data_files=str(tmp_path / "json" / "mmcof.json"), cache_dir=cache)["train"]
    table = load_dataset("parquet", data_files=str(tmp_path / "parquet" / "mmcof.parquet"), cache_dir=cache)["train"]

    assert rows["id"] == table["id"] == [t.id for t in trajectories[:3]]
    assert rows[0]["messages"] == table[0]["messages"] == cof_format.trajectory_messages(trajectories[0])
    for row, parquet_row in zip(rows, table):
        stored = load_images(tmp_path / "json", row)
        assert [image_sha256(image) for image in parquet_row["images"]] == [image_sha256(image) for image in stored]


def test_tiny_qwen25vl_processor_sees_one_image_per_placeholder_and_the_budget_is_exact(tmp_path, run):
    from transformers import AutoProcessor

    from tests.support.tiny_models import build_tiny_qwen25vl

    model_dir = build_tiny_qwen25vl(tmp_path / "qwen")
    run_dir, _ = run
    export(run_dir, "sharegpt", tmp_path / "out")
    sample = json.loads((tmp_path / "out" / "mmcof.json").read_text())[0]  # the two-zoom sample
    images = load_images(tmp_path / "out", sample)
    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": m["role"], "content": [{"type": "image"} if part == "<image>" else {"type": "text", "text": part}
                                                for part in re.split("(<image>)", m["content"]) if part]}
                for m in sample["messages"]]
    text = processor.apply_chat_template(messages, tokenize=False)
    inputs = processor(text=[text], images=images, return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    tokenizer = processor.tokenizer

    assert len(images) == 3
    assert ids.count(tokenizer.convert_tokens_to_ids("<|vision_start|>")) == len(images)
    assert len(inputs["image_grid_thw"]) == len(images)
    pads = ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert pads == sum(image_tokens(im.width, im.height, 224 * 224, 56 * 56) for im in images)
    budget = TokenBudget(224 * 224, str(model_dir), min_pixels=56 * 56)  # the tiny processor's pixel limits
    assert budget.count(sample["messages"], [im.size for im in images]) == len(ids)


def test_frames_above_max_pixels_are_dropped_with_the_reason(tmp_path, run):
    run_dir, trajectories = run
    report = export(run_dir, "sharegpt", tmp_path / "out", max_pixels=200_000)
    assert report["samples"] == 2
    assert report["dropped_samples"] == [{"id": trajectories[2].id, "reason": (
        "frame 448x448 is above --max-pixels 200000: a trainer would downscale it and break its box coordinates")}]


def test_token_budget_gives_cutoff_len_and_the_vllm_image_limit(tmp_path, run):
    run_dir, _ = run
    budget = export(run_dir, "sharegpt", tmp_path / "out")["token_budget"]
    assert budget["max_images"] == 3 and budget["limit_mm_per_prompt"] == '{"image": 3}'
    assert budget["cutoff_len"] % 128 == 0 and budget["cutoff_len"] - 128 < budget["max_tokens"] <= budget["cutoff_len"]
    assert budget["text_tokens"].startswith("estimate")
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"`cutoff_len: {budget['cutoff_len']}`" in card
    assert "--limit-mm-per-prompt '{\"image\": 3}'" in card
    assert "run config hash: `test-fingerprint`" in card and "samples: **3** (1 direct, 2 with zooms)" in card


def test_absolute_paths_and_a_custom_system_prompt(tmp_path, run):
    run_dir, _ = run
    export(run_dir, "sharegpt", tmp_path / "out", system_prompt="Zoom when needed.", absolute_paths=True)
    sample = json.loads((tmp_path / "out" / "mmcof.json").read_text())[0]
    assert sample["messages"][0] == {"role": "system", "content": "Zoom when needed."}
    assert all(path.startswith("/") and (tmp_path / "out" / "images" / path.rsplit("/", 1)[1]).is_file()
               for path in sample["images"])


def test_qwen_swift_and_v1_records(tmp_path, run):
    run_dir, trajectories = run
    zoom = trajectories[2]
    for fmt in ("qwen", "swift", "v1"):
        export(run_dir, fmt, tmp_path / fmt)
    qwen = json.loads((tmp_path / "qwen" / "mmcof_qwen.json").read_text())[2]
    assert qwen["conversations"] == [
        {"from": "human", "value": cof_format.user_prompt(zoom.task.question, None)},
        {"from": "gpt", "value": cof_format.zoom_turn("Zoom 1 looks closer.", (100, 100, 200, 200))},
        {"from": "human", "value": cof_format.TOOL_RESULT},
        {"from": "gpt", "value": cof_format.answer_turn("The sign reads EXIT.", "EXIT")}]
    assert len(qwen["image"]) == 2 and qwen["id"] == zoom.id
    swift = [json.loads(line) for line in (tmp_path / "swift" / "mmcof_swift.jsonl").read_text().splitlines()]
    assert set(swift[2]) == {"messages", "images"} and swift[2]["messages"] == cof_format.trajectory_messages(zoom)
    v1 = json.loads((tmp_path / "v1" / "mmcof_v1.json").read_text())[2]
    assert v1["messages"][-1]["content"] == ("<think> Zoom 1 looks closer. <|box_start|>[100, 100, 200, 200]<|box_end|>"
                                             "<|image_zoomin|><image> The sign reads EXIT. </think>\n<answer> EXIT </answer>")
    assert json.loads((tmp_path / "v1" / "dataset_info.json").read_text())["mmcof_v1"]["file_name"] == "mmcof_v1.json"
    assert "resize_vocab: true" in (tmp_path / "v1" / "README.md").read_text()


def test_export_refuses_a_foreign_folder_and_the_run_itself(tmp_path, run):
    run_dir, _ = run
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(StoreError, match="is not empty and holds no earlier export"):
        export(run_dir, "sharegpt", tmp_path / "mine")
    with pytest.raises(StoreError, match="is the run folder"):
        export(run_dir, "sharegpt", run_dir)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_the_card_says_how_each_trainer_loads_the_export_unchanged(tmp_path, run):
    run_dir, _ = run
    cards = {}
    for fmt in ("sharegpt", "swift", "qwen"):
        report = export(run_dir, fmt, tmp_path / fmt, max_pixels=2048 * 2048)
        cards[fmt] = ((tmp_path / fmt / "README.md").read_text(), report["token_budget"]["cutoff_len"])
    card, cutoff = cards["sharegpt"]
    assert ("`image_max_pixels: 4194304`" in card and f"`cutoff_len: {cutoff}` or more" in card
            and "`template: qwen2_vl`" in card and "`dataset_dir: <this folder>`" in card)
    card, cutoff = cards["swift"]
    assert f"`MAX_PIXELS=4194304 swift sft --model Qwen/Qwen2.5-VL-7B-Instruct --dataset mmcof_swift.jsonl " \
           f"--max_length {cutoff}`" in card
    assert "`ROOT_IMAGE_DIR=<this folder>`" in card and "`--template qwen2_5_vl`" in card
    card, cutoff = cards["qwen"]
    assert "`--max_pixels 4194304`" in card and f"`--model_max_length {cutoff}` or more" in card
