"""Task sources: a V*-format folder, COCO-style annotations, a questions file through the CLI, and images kept
out by the exclusion list or as near-duplicates."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmcof_gen import resources
from mmcof_gen.config import PipelineConfig, TasksConfig
from mmcof_gen.errors import ConfigError
from mmcof_gen.filtering import contamination_rule
from mmcof_gen.imaging import discover_images, file_sha256
from mmcof_gen.schema import ErrorRecord, ImageTasks
from mmcof_gen.store import read_jsonl
from mmcof_gen.synthesize import task_source
from mmcof_gen.tasks.coco import coco_source, plural
from mmcof_gen.tasks.exclusion import load_exclusions, perceptual_hash, screen
from mmcof_gen.tasks.sources import folder_source
from mmcof_gen.tasks.vstar import is_vstar_folder, vstar_source
from tests.support.runs import write_noise_image

CLI = [sys.executable, "-m", "mmcof_gen.cli"]


def scene(path: Path, seed: int, size=(640, 480)) -> Path:
    """A smooth picture (gradient sky, a few shapes): what perceptual hashes are made for, unlike noise."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(size[1]):
        draw.line([(0, y), (size[0], y)], fill=(40 + y * 150 // size[1], 90, 200 - y * 120 // size[1]))
    shapes = [(60, 80, 260, 300), (300, 200, 600, 420), (420, 40, 560, 160), (100, 330, 250, 460)]
    for index, box in enumerate(shapes[seed % 2:] + shapes[: seed % 2]):
        colour = ((seed * 97 + index * 60) % 256, (seed * 31 + index * 90) % 256, (index * 120) % 256)
        (draw.ellipse if (seed + index) % 2 else draw.rectangle)(box, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ------------------------------------------------------------------------------------------ V*


@pytest.fixture()
def vstar_dir(tmp_path) -> Path:
    """The V*-bench layout (HF craigwu/vstar_bench): category folders of <name>.jpg + <name>.json."""
    root = tmp_path / "vstar_bench"
    write_noise_image(root / "direct_attributes" / "sa_1.jpg", (640, 480), 1)
    (root / "direct_attributes" / "sa_1.json").write_text(json.dumps({
        "target_object": ["cup"], "bbox": [[100.4, 200, 30, 20.6]],
        "question": "What is the color of the cup?", "options": ["red", "blue", "green", "white"]}))
    write_noise_image(root / "relative_position" / "sa_2.jpg", (640, 480), 2)
    (root / "relative_position" / "sa_2.json").write_text(json.dumps({
        "target_object": ["dog", "bench"], "bbox": [[10, 20, 30, 40], [400, 300, 50, 60]],
        "question": "Is the dog on the left or right side of the bench?", "options": ["left", "right"]}))
    return root


def test_vstar_folder_makes_units_with_options_answers_and_boxes(vstar_dir):
    assert is_vstar_folder(vstar_dir)
    source = vstar_source(vstar_dir)
    units = list(source.units)
    assert source.errors == []
    assert [(u.rel, u.source) for u in units] == [("direct_attributes/sa_1.jpg", "vstar:vstar_bench"),
                                                  ("relative_position/sa_2.jpg", "vstar:vstar_bench")]
    cup, = units[0].questions
    assert cup.question == "What is the color of the cup?"
    assert sorted(cup.options) == ["blue", "green", "red", "white"] and cup.answer == "red"
    assert cup.options == ["blue", "green", "white", "red"]  # shuffled by a fixed seed per image: "A" is not always right
    assert cup.boxes == [(100, 200, 130, 221)] and cup.question_type == "attribute"
    dog, = units[1].questions
    assert dog.answer == "left" and dog.question_type == "position"
    assert dog.boxes == [(10, 20, 40, 60), (400, 300, 450, 360)]


def test_vstar_questions_file_pointing_outside_the_folder_is_refused(vstar_dir):
    write_noise_image(vstar_dir.parent / "outside.jpg", (64, 64), 3)
    (vstar_dir / "test_questions.jsonl").write_text("\n".join(json.dumps(row) for row in [
        {"image": "direct_attributes/sa_1.jpg", "text": "What is the color of the cup?\n(A) blue\n(B) red\n"
                                                        "Answer with the option's letter from the given choices directly.",
         "category": "direct_attributes", "label": "B", "question_id": 0},
        {"image": "../outside.jpg", "text": "Is it red?\n(A) yes\n(B) no", "category": "direct_attributes",
         "label": "A", "question_id": 1}]) + "\n")
    source = vstar_source(vstar_dir)
    unit, = source.units
    assert unit.rel == "direct_attributes/sa_1.jpg"
    assert (unit.questions[0].options, unit.questions[0].answer) == (["blue", "red"], "red")
    assert unit.questions[0].boxes == [(100, 200, 130, 221)]  # joined with the per-image JSON
    error, = source.errors
    assert error.stage == "tasks" and error.reason.endswith("image '../outside.jpg' points outside the images folder; refused")


def test_vstar_takes_the_images_an_images_folder_takes(vstar_dir):
    """One list of image suffixes: a .tif or an upper-case .BMP beside an annotation is read, as in a folder."""
    (vstar_dir / "direct_attributes" / "sa_1.jpg").rename(vstar_dir / "direct_attributes" / "sa_1.tif")
    (vstar_dir / "relative_position" / "sa_2.jpg").rename(vstar_dir / "relative_position" / "sa_2.BMP")
    assert is_vstar_folder(vstar_dir)
    assert [u.rel for u in vstar_source(vstar_dir).units] == ["direct_attributes/sa_1.tif", "relative_position/sa_2.BMP"]
    assert [p.name for p in discover_images(vstar_dir)] == ["sa_1.tif", "sa_2.BMP"]


def test_a_plain_folder_is_not_taken_for_vstar(tmp_path):
    write_noise_image(tmp_path / "a" / "x.jpg", (64, 64), 0)
    (tmp_path / "a" / "x.json").write_text('{"caption": "not a question"}')
    assert not is_vstar_folder(tmp_path)
    assert task_source(PipelineConfig(), tmp_path)[0] == "folder"


# ------------------------------------------------------------------------------------------ COCO


def coco_fixture(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "images"
    write_noise_image(images / "kitchen" / "a.jpg", (900, 600), 0)
    write_noise_image(images / "empty.jpg", (100, 100), 1)
    write_noise_image(tmp_path / "escape.jpg", (100, 100), 2)
    categories = {5: ("cup", "kitchen"), 2: ("fork", "kitchen"), 3: ("knife", "kitchen"), 4: ("spoon", "kitchen"),
                  1: ("clock", "indoor"), 6: ("vase", "indoor"), 7: ("person", "person"), 8: ("bird", "animal")}
    annotations = [
        (5, [100, 450, 40, 50]),   # cup: small, alone in the bottom left cell
        (1, [700, 80, 50, 50]),    # clock: small, alone in the top right cell
        (8, [300, 60, 20, 15]),    # two birds in the top cell (one near a grid line)
        (8, [380, 90, 20, 15]),
        (7, [400, 200, 300, 380]),  # a large person: asked about never
    ]
    coco = {
        "images": [{"id": 1, "file_name": "kitchen/a.jpg", "width": 900, "height": 600},
                   {"id": 2, "file_name": "empty.jpg", "width": 100, "height": 100},
                   {"id": 3, "file_name": "../escape.jpg", "width": 100, "height": 100}],
        "annotations": [{"id": i, "image_id": 1, "category_id": c, "bbox": b, "iscrowd": 0}
                        for i, (c, b) in enumerate(annotations)],
        "categories": [{"id": i, "name": name, "supercategory": sup} for i, (name, sup) in categories.items()],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco))
    return images, path


def test_coco_annotations_make_object_position_and_counting_tasks(tmp_path):
    images, annotations = coco_fixture(tmp_path)
    source = coco_source(images, annotations, TasksConfig(max_per_image=10))
    unit, = source.units  # the image without annotations makes no unit
    assert unit.rel == "kitchen/a.jpg" and unit.source == "coco:instances.json"
    asked = {q.question: q for q in unit.questions}
    assert list(asked) == [
        "What is the small object in the bottom left part of the image?",
        "What is the small object in the top right part of the image?",
        "Is the cup on the left or right side of the clock?",
        "How many cups are there in the image?",
        "How many clocks are there in the image?",
        "How many birds are there in the image?",
    ]
    cup = asked["What is the small object in the bottom left part of the image?"]
    assert cup.answer == "cup" and sorted(cup.options) == ["cup", "fork", "knife", "spoon"]  # kitchen distractors
    assert cup.boxes == [(100, 450, 140, 500)] and cup.question_type == "object" and cup.position == "bottom left"
    clock = asked["What is the small object in the top right part of the image?"]
    assert clock.answer == "clock" and "vase" in clock.options and "bird" not in clock.options  # never one present
    side = asked["Is the cup on the left or right side of the clock?"]
    assert (side.answer, sorted(side.options), side.boxes) == ("left", ["left", "right"],
                                                               [(100, 450, 140, 500), (700, 80, 750, 130)])
    birds = asked["How many birds are there in the image?"]
    assert (birds.answer, sorted(birds.options), birds.boxes) == ("2", ["1", "2", "3", "4"], [(300, 60, 400, 105)])
    error, = source.errors
    assert error.reason == "instances.json: image 3 '../escape.jpg' points outside the images folder; refused"
    assert len(coco_source(images, annotations, TasksConfig()).units.__next__().questions) == 4  # tasks.max_per_image


def test_coco_file_that_is_not_coco_names_the_flag(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"images": []}')
    with pytest.raises(ConfigError, match=r"--coco .*bad.json: not COCO-style annotations"):
        coco_source(tmp_path, path, TasksConfig())


def test_plural_of_category_names():
    assert [plural(n) for n in ("person", "bus", "traffic light", "teddy bear", "skis", "butterfly", "toy")] == [
        "people", "buses", "traffic lights", "teddy bears", "skis", "butterflies", "toys"]


# ------------------------------------------------------------------------------------------ CLI end to end


def test_synthesize_questions_file_end_to_end_refuses_a_question_outside_the_folder(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (448, 336), 0)
    write_noise_image(tmp_path / "secret.png", (64, 64), 1)
    questions = tmp_path / "tasks.jsonl"
    questions.write_text("\n".join(json.dumps(row) for row in [
        {"image": "a.png", "question": "What does the sign say?", "answer": "EXIT", "bbox": [10, 10, 50, 30]},
        {"image": "../secret.png", "question": "What is this?", "answer": "x"},
        {"image": str(tmp_path / "secret.png"), "question": "And this?", "answer": "y"},
    ]) + "\n")
    out = tmp_path / "run"
    result = subprocess.run([*CLI, "synthesize", "--images", images, "--questions", questions, "--out", out,
                             "--resolutions", "448"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    image_tasks, = read_jsonl(out / "tasks.jsonl", ImageTasks)
    task, = image_tasks.tasks
    assert (task.image, task.question, task.answer, task.gt_boxes) == ("a.png", "What does the sign say?", "EXIT",
                                                                       [(10, 10, 50, 30)])
    reasons = sorted(e.reason for e in read_jsonl(out / "errors.jsonl", ErrorRecord))
    assert reasons == ["tasks.jsonl:2: image '../secret.png' points outside the images folder; refused",
                       f"tasks.jsonl:3: image {str(tmp_path / 'secret.png')!r} points outside the images folder; refused"]
    assert json.loads((out / "manifest.json").read_text())["inputs"]["source"] == "questions"


def test_questions_the_ocr_agent_cannot_search_are_refused_before_the_run_naming_the_line(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (448, 336), 0)
    questions = tmp_path / "tasks.jsonl"
    questions.write_text("\n".join(json.dumps(row) for row in [
        {"image": "a.png", "question": "What does the sign say?", "answer": "EXIT", "bbox": [10, 10, 50, 30]},
        {"image": "a.png", "question": "What does the other sign say?", "answer": "IN"},
        {"image": "a.png", "question": "And the third?", "answer": "UP", "position": "middle"},
    ]) + "\n")
    out = tmp_path / "run"
    result = subprocess.run([*CLI, "synthesize", "--images", images, "--questions", questions, "--out", out,
                             "--resolutions", "448"], capture_output=True, text=True, timeout=300)
    assert (result.returncode, result.stderr) == (2, (
        "mmcof-gen: --questions tasks.jsonl:2: the OCR agent (agent.kind ocr) needs a question with a position "
        '(e.g. "top left") or a bbox; add one, or use a pipeline with agent.kind vlm (1 more line(s) like it)\n'))
    assert not out.exists()  # refused before the run: no record written


def test_an_image_whose_given_questions_were_all_refused_says_so(tmp_path):
    images = tmp_path / "images"
    write_noise_image(images / "a.png", (448, 336), 0)
    questions = tmp_path / "tasks.jsonl"
    questions.write_text(json.dumps({"image": "a.png", "question": "What does the sign say?", "answer": "EXIT",
                                     "bbox": [10, 10, 900, 30]}) + "\n")
    out = tmp_path / "run"
    result = subprocess.run([*CLI, "synthesize", "--images", images, "--questions", questions, "--out", out,
                             "--resolutions", "448"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert "1 image(s) gave no task: each question given for it was refused (errors.jsonl says why) (1)\n" in (
        result.stdout)
    error, = read_jsonl(out / "errors.jsonl", ErrorRecord)
    assert error.reason.startswith("bbox of question 'What does the sign say?': box [10, 10, 900, 30] is outside")


def test_synthesize_vstar_folder_end_to_end(vstar_dir, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([*CLI, "synthesize", "--images", vstar_dir, "--out", out, "--resolutions", "448"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    records = {r.image: r.tasks for r in read_jsonl(out / "tasks.jsonl", ImageTasks)}
    cup, = records["direct_attributes/sa_1.jpg"]
    assert (cup.source, cup.question_type, cup.answer, cup.options, cup.gt_boxes) == (
        "vstar:vstar_bench", "attribute", "red", ["blue", "green", "white", "red"], [(100, 200, 130, 221)])
    assert [t.answer for t in records["relative_position/sa_2.jpg"]] == ["left"]
    assert json.loads((out / "manifest.json").read_text())["inputs"]["source"] == "vstar"


# ------------------------------------------------------------------------------------------ exclusion


def screened(folder: Path, exclude: Path | None = None, distance: int | None = None) -> dict[str, str | None]:
    exclusions = load_exclusions(exclude, "--exclude", distance is not None) if exclude else None
    return {u.rel: u.skipped for u in screen(folder_source(folder).units, exclusions, distance, 10**8)}


def test_exclusion_list_by_sha256_and_by_file_name(tmp_path):
    folder = tmp_path / "images"
    a, b, c = (scene(folder / name, seed) for seed, name in enumerate(["a.png", "b.png", "sub/c.png"]))
    listing = tmp_path / "exclude.txt"
    listing.write_text(f"# benchmark images\n{file_sha256(a)}\nc.png  # by name\n")
    assert screened(folder, listing) == {
        "a.png": f"on the exclusion list (as {file_sha256(a)!r})", "b.png": None,
        "sub/c.png": "on the exclusion list (as 'c.png')"}
    # the filter's contamination rule reads the same list
    assert contamination_rule(load_exclusions(listing, "filter.exclude_file").keys) is not None


def test_near_duplicates_of_excluded_and_of_earlier_images_are_skipped(tmp_path):
    bench = tmp_path / "bench"
    original = scene(bench / "sa_1.png", 0)
    folder = tmp_path / "images"
    folder.mkdir()
    with Image.open(original) as image:  # a re-encoded, slightly resized copy of a benchmark image
        image.resize((600, 450), Image.BICUBIC).save(folder / "copy.jpg", quality=70)
    scene(folder / "d_own.png", 1)
    with Image.open(folder / "d_own.png") as image:
        image.resize((576, 432)).save(folder / "e_own_small.jpg", quality=80)
    scene(folder / "f_other.png", 2)
    distance = 6
    assert file_sha256(original) != file_sha256(folder / "copy.jpg")  # an exact list would miss it
    assert bin(perceptual_hash(folder / "d_own.png", 10**8) ^ perceptual_hash(original, 10**8)).count("1") > 20
    skipped = screened(folder, bench, distance)
    assert skipped["copy.jpg"].startswith("near-duplicate of excluded image sa_1.png (perceptual-hash distance")
    assert skipped["d_own.png"] is None and skipped["f_other.png"] is None
    assert skipped["e_own_small.jpg"].startswith("near-duplicate of earlier image d_own.png (perceptual-hash distance")
    # without near-duplicate detection only the exact benchmark file would be caught
    assert set(screened(folder, bench).values()) == {None}


def test_skipped_images_are_recorded_with_the_reason(tmp_path):
    from mmcof_gen.synthesize import synthesize

    folder = tmp_path / "images"
    scene(folder / "a.png", 0)
    scene(folder / "b.png", 1)
    listing = tmp_path / "exclude.txt"
    listing.write_text("a\n")
    config = PipelineConfig(resolutions=[448], tasks=TasksConfig(exclude=listing))
    config.prompts_dir = resources.prompts("template")
    stats = synthesize(config, folder, tmp_path / "run")
    error, = read_jsonl(tmp_path / "run" / "errors.jsonl", ErrorRecord)
    assert (error.stage, error.image, error.reason) == ("skipped", "a.png", "skipped: on the exclusion list (as 'a')")
    assert (stats["skipped"], stats["errors"], stats["images"]) == (1, 0, 1)


def test_unreadable_exclusion_list_names_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks.exclude .*missing.txt cannot be read"):
        load_exclusions(tmp_path / "missing.txt", "tasks.exclude")
    bad = tmp_path / "bad.txt"
    bad.write_text("phash:xyz\n")
    with pytest.raises(ConfigError, match=r"bad.txt:1: 'phash:xyz' is not phash:<16 hex digits>"):
        load_exclusions(bad, "tasks.exclude")
