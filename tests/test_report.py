"""`mmcof-gen view`: the static HTML report, checked in files and in a real headless Chromium."""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmcof_gen import report
from mmcof_gen.cof_format import trajectory_messages
from mmcof_gen.imaging import crop_zoom, image_sha256, make_frame
from mmcof_gen.report import CROP_THUMB, write_report
from mmcof_gen.schema import ChainStep, ErrorRecord, Provenance, Step, Task, Trajectory, Verdict, View
from mmcof_gen.store import write_json_atomic

MAX_PIXELS = 250_000_000
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROVENANCE = Provenance(package_version="test", config_hash="cfg")


def scene(path: Path, size: tuple[int, int], seed: int) -> Path:
    """A small image with coloured blocks, so frames, crops and screenshots are not flat."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", size, (230, 230, 220))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = int(rng.integers(0, size[0] - 20)), int(rng.integers(0, size[1] - 20))
        draw.rectangle((x, y, x + 40, y + 30), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def trajectory(images: Path, image: str, resolution: int, status: str, zooms: list, question_type: str = "text",
               question: str = "What does the sign say?") -> Trajectory:
    """A record as synthesize writes it: a search with `zooms`, kept as the chain when accepted.
    The frame hash is that of the real frame (unless the image is gone)."""
    path = images / image
    if path.exists():
        frame = make_frame(path, resolution, MAX_PIXELS)
        width, height, sha = frame.width, frame.height, image_sha256(frame)
    else:
        width, height, sha = 448, 336, "0" * 64
    task = Task(id=f"task-{image}-{question}", image=image, image_sha256="img", question=question, answer="GATE",
                source="test", question_type=question_type)
    steps = [Step(action="read", arguments={"what": "read the whole frame"}, observation="0 text line(s)")]
    if zooms:
        steps.append(Step(action="locate", arguments={"phrase": "the sign"}, box=(0, 0, width // 2, height // 2),
                          thought="The sign is too small.", observation="1 candidate"))
        for box in zooms:
            steps.append(Step(action="zoom", arguments={"bbox_2d": list(box)}, box=box, observation="crop"))
            steps.append(Step(action="read", box=box, arguments={"what": "read the zoomed candidate"},
                              observation="1 text line(s)"))
    accepted = status == "accepted"
    return Trajectory(
        id=f"{task.id}-r{resolution}", task=task,
        view=View(resolution=resolution, width=width, height=height, original_width=640, original_height=480,
                  frame_sha256=sha),
        steps=steps, chain=[ChainStep(thought=f"Zoom {i + 1}.", box=box) for i, box in enumerate(zooms)] if accepted else [],
        final_thought="It reads GATE.", answer="GATE" if accepted else "GAT",
        verdict=Verdict(correct=accepted, predicted="GATE" if accepted else "GAT", expected="GATE",
                        reason="matches the ground truth" if accepted else "read 'GAT', expected 'GATE'"),
        needs_zoom=bool(zooms), provenance=PROVENANCE, status=status,
        reason=None if accepted else "no verified answer after 1 zoom(s): read 'GAT', expected 'GATE'",
    )


def write_run(run: Path, images: Path, trajectories: list[Trajectory], errors: list[ErrorRecord] = ()) -> Path:
    run.mkdir(parents=True)
    write_json_atomic(run / "manifest.json", {"inputs": {"images": str(images)}, "fingerprint": "cfg",
                                              "config": {"images": {"max_pixels": MAX_PIXELS}}})
    (run / "trajectories.jsonl").write_text("".join(t.model_dump_json() + "\n" for t in trajectories))
    (run / "errors.jsonl").write_text("".join(e.model_dump_json() + "\n" for e in errors))
    return run


def report_data(html: Path) -> dict:
    """data.js, with the cards of every chunk file as `trajectories` (checked against index.js)."""
    files = html.parent / f"{html.stem}_files"
    data = json.loads((files / "data.js").read_text().removeprefix("window.MMCOF_REPORT = ").removesuffix(";\n"))
    data["trajectories"] = []
    for number in range(data["chunks"]):
        text = (files / report.chunk_name(number)).read_text()
        data["trajectories"] += json.loads(text.removeprefix(f"window.mmcofChunk({number},").removesuffix(");\n"))
    index = json.loads((files / "index.js").read_text().removeprefix("window.MMCOF_INDEX = ").removesuffix(";\n"))
    assert index == [[card[k] for k in report.INDEX_FIELDS] for card in data["trajectories"]]
    return data


ZOOM_CHAIN = [(40, 30, 200, 150), (90, 60, 150, 110)]


@pytest.fixture
def small_run(tmp_path):
    images = tmp_path / "images"
    scene(images / "a.png", (640, 480), 0)
    scene(images / "sub" / "b.png", (480, 640), 1)
    trajectories = [
        trajectory(images, "a.png", 448, "accepted", ZOOM_CHAIN),
        trajectory(images, "a.png", 448, "accepted", [], question="Is there a sign?", question_type="yes/no"),
        trajectory(images, "sub/b.png", 224, "rejected", [(10, 10, 60, 60)]),
        trajectory(images, "gone.png", 448, "accepted", [(10, 10, 50, 50)]),
    ]
    errors = [ErrorRecord(id="img-1", stage="image", image="broken.jpg", reason="cannot identify image file")]
    return write_run(tmp_path / "run", images, trajectories, errors), trajectories


def test_report_shows_every_step_box_chain_crops_and_the_trained_chain(small_run, tmp_path):
    run, trajectories = small_run
    html = write_report(run, tmp_path / "out" / "report.html")
    assert html == tmp_path / "out" / "report.html" and html.exists()
    data = report_data(html)
    cards = {c["id"]: c for c in data["trajectories"]}
    zoom = cards[trajectories[0].id]
    assert [s["box"] for s in zoom["steps"]] == [None, [0, 0, 252, 182], *[list(b) for b in ZOOM_CHAIN for _ in "zr"]]
    assert [c["box"] for c in zoom["chain"]] == [list(b) for b in ZOOM_CHAIN]
    assert zoom["messages"] == trajectory_messages(trajectories[0])[1:]
    assert zoom["verdict"]["reason"] == "matches the ground truth" and zoom["status"] == "accepted"
    assert zoom["other_zooms"] == []
    rejected = cards[trajectories[2].id]
    assert rejected["messages"] is None and rejected["reason"].startswith("no verified answer")
    assert rejected["chain"] == [] and [(z["step"], z["box"]) for z in rejected["other_zooms"]] == [(3, [10, 10, 60, 60])]
    assert (tmp_path / "out" / "report_files" / rejected["other_zooms"][0]["crop"]).exists()
    assert data["errors"][0]["reason"] == "cannot identify image file" and data["error_count"] == 1


def test_crop_thumbnails_are_the_crop_function_on_the_frame(small_run, tmp_path):
    run, trajectories = small_run
    html = write_report(run, tmp_path / "report.html")
    files = tmp_path / "report_files"
    card = report_data(html)["trajectories"][0]
    frame = make_frame(run.parent / "images" / "a.png", 448, MAX_PIXELS)
    for step in card["chain"]:
        expected = crop_zoom(frame, tuple(step["box"]))
        expected.thumbnail((CROP_THUMB, CROP_THUMB), Image.LANCZOS)
        written = Image.open(files / step["crop"])
        assert written.size == expected.size
        assert np.abs(np.asarray(written, float) - np.asarray(expected, float)).mean() < 3  # JPEG noise only
    thumbnail = Image.open(files / card["frame"]["src"])
    assert frame.size == (504, 364) and thumbnail.size == frame.size  # under FRAME_THUMB: kept at full size


def test_a_frame_shared_by_trajectories_is_written_once(small_run, tmp_path):
    run, trajectories = small_run
    data = report_data(write_report(run, tmp_path / "report.html"))
    first, second = data["trajectories"][:2]
    assert first["frame"]["src"] == second["frame"]["src"]
    jpegs = sorted(p.name for p in (tmp_path / "report_files").glob("*.jpg"))
    # a.png@448 and b.png@224: one frame each; crops: two on a, one on b; gone.png: nothing.
    assert [n.split("-")[0] for n in jpegs].count("frame") == 2
    assert [n.split("-")[0] for n in jpegs].count("crop") == 3


def test_missing_image_is_shown_with_its_path_not_fatal(small_run, tmp_path):
    run, trajectories = small_run
    card = report_data(write_report(run, tmp_path / "report.html"))["trajectories"][3]
    assert card["frame"] == {"missing": f"image not found: {run.parent / 'images' / 'gone.png'}"}
    assert card["chain"] == [{"thought": "Zoom 1.", "box": [10, 10, 50, 50], "label": None, "crop": None,
                              "crop_error": None}]


def test_a_box_the_zoom_tool_refuses_is_shown_with_the_reason(tmp_path):
    images = tmp_path / "images"
    scene(images / "a.png", (640, 480), 0)
    outside = trajectory(images, "a.png", 448, "rejected", [(400, 300, 600, 400)])  # the frame is 504x364
    card = report_data(write_report(write_run(tmp_path / "run", images, [outside]), tmp_path / "report.html"))[
        "trajectories"][0]
    assert card["other_zooms"] == [{"step": 3, "box": [400, 300, 600, 400], "crop": None, "crop_error":
                                    "box [400, 300, 600, 400] is outside the 504x364 image (x must be within 0..504, "
                                    "y within 0..364)"}]
    assert "src" in card["frame"]


def test_changed_image_is_flagged(small_run, tmp_path):
    run, trajectories = small_run
    scene(run.parent / "images" / "a.png", (640, 480), 99)  # the image changed after synthesis
    card = report_data(write_report(run, tmp_path / "report.html"))["trajectories"][0]
    assert "gives another frame than the one recorded" in card["frame"]["warning"]
    assert (tmp_path / "report_files" / card["frame"]["src"]).exists()


def test_rerun_reuses_thumbnails_without_decoding_images(small_run, tmp_path, monkeypatch):
    run, _ = small_run
    first = report_data(write_report(run, tmp_path / "report.html"))
    names = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "report_files").glob("*.jpg")}

    def no_decoding(*args):
        raise AssertionError("make_frames called although every thumbnail exists")

    monkeypatch.setattr(report, "make_frames", no_decoding)
    second = report_data(write_report(run, tmp_path / "report.html"))
    assert second["trajectories"] == first["trajectories"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "report_files").glob("*.jpg")} == names


def test_summary_plots_are_written_as_pngs(small_run, tmp_path):
    run, _ = small_run
    data = report_data(write_report(run, tmp_path / "report.html"))
    assert [p["title"] for p in data["plots"]] == ["Zooms per resolution (accepted)", "Zoom box area distribution",
                                                   "Accept / reject funnel", "Question types"]
    for plot in data["plots"]:
        pixels = np.asarray(Image.open(tmp_path / "report_files" / plot["src"]).convert("L"), float)
        assert pixels.std() > 5
    # 4 searches, none crashed; 3 accepted, 2 of them zoom chains (gone.png's chain counts too).
    assert data["funnel"] == [["searches", 4], ["finished", 4], ["accepted", 3], ["zoom chains", 2]]


def test_without_matplotlib_the_report_is_written_without_plots(small_run, tmp_path, monkeypatch):
    run, _ = small_run
    find_spec = report.importlib.util.find_spec
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None if name == "matplotlib" else find_spec(name))
    data = report_data(write_report(run, tmp_path / "report.html"))
    assert data["plots"] is None and len(data["trajectories"]) == 4
    assert list((tmp_path / "report_files").glob("plot-*")) == []


def test_view_cli_prints_the_report_path_and_refuses_a_non_run(small_run, tmp_path):
    run, _ = small_run
    result = subprocess.run([sys.executable, "-m", "mmcof_gen.cli", "view", str(run)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(run / "report.html") and (run / "report.html").exists()
    bad = subprocess.run([sys.executable, "-m", "mmcof_gen.cli", "view", str(tmp_path / "images")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a run folder" in bad.stderr and len(bad.stderr.splitlines()) == 1


# -- in a real browser ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Chromium is not installed; the report test needs it: apt-get install -y chromium "
                    "(`make test` installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -e '.[test]' (no browser download is needed)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


READY = "window.mmcofReport !== undefined && mmcofReport.ready()"  # the cards of the page shown are drawn


def open_report(browser, html: Path, height: int = 2400):
    """A page with the report loaded; console errors, page errors and failed loads are collected."""
    page = browser.new_page(viewport={"width": 1280, "height": height})
    problems = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"failed to load {request.url}"))
    page.goto(html.as_uri())
    page.wait_for_function(READY)
    page.wait_for_function("[...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"
                           ".every(i => i.complete)")
    return page, problems


VISIBLE_IMAGES = "[...document.images].filter(i => i.getBoundingClientRect().top < innerHeight)"


def test_report_renders_images_and_boxes_in_chromium(browser, small_run, tmp_path):
    run, trajectories = small_run
    page, problems = open_report(browser, write_report(run, tmp_path / "report.html"))
    visible = page.evaluate(f"{VISIBLE_IMAGES}.map(i => [i.alt, i.naturalWidth])")
    assert len(visible) >= 4 + 3  # four plots, the frame of the first card and its two crops
    assert all(width > 0 for _, width in visible), visible
    first = page.locator(".card").first
    # every distinct box once: the locate region (step 2), then C1 and C2 with the zoom + read steps on them
    assert [(g.get_attribute("class"), g.get_attribute("data-steps"), g.locator("text").text_content())
            for g in first.locator(".box").all()] == [("box step", "2", "2"), ("box chain", "3,4", "C1 · 3,4"),
                                                      ("box chain", "5,6", "C2 · 5,6")]
    assert page.locator(".missing").inner_text() == (
        f"Frame unavailable: image not found: {run.parent / 'images' / 'gone.png'}")
    pixels = np.asarray(Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("L"), float)
    assert pixels.std() > 20  # not a blank page
    assert problems == []
    page.close()


def test_report_of_5000_trajectories_pages_and_filters_in_chromium(browser, tmp_path):
    images = tmp_path / "images"
    names = [scene(images / f"{i}.png", (320 + 40 * i, 240), i).name for i in range(3)]
    boxes = [(10, 10, 60, 50), (30, 20, 120, 90), (100, 60, 160, 120)]
    templates = {}
    for name in names:
        for resolution in (224, 336):
            for status, chain in (("accepted", boxes[:2]), ("accepted", []), ("rejected", boxes[2:])):
                templates[(name, resolution, status, len(chain))] = trajectory(images, name, resolution, status, chain)
    records = []
    for i in range(5000):
        base = list(templates.values())[i % len(templates)]
        task = base.task.model_copy(update={"id": f"t{i:05d}", "question_type": ("text", "count", "color")[i % 7 % 3]})
        records.append(base.model_copy(update={"id": f"t{i:05d}-r{base.view.resolution}", "task": task}))
    html = write_report(write_run(tmp_path / "run", images, records), tmp_path / "report.html")
    assert len(list((tmp_path / "report_files").glob("*.jpg"))) == 6 + 6 * 3  # frames + distinct crops

    page, problems = open_report(browser, html, height=900)
    assert page.locator(".card").count() == 50
    assert page.locator(".page-info").first.inner_text() == "page 1 of 100 (5000 trajectories)"
    assert all(w > 0 for w in page.evaluate(f"{VISIBLE_IMAGES}.map(i => i.naturalWidth)"))
    page.locator(".pager button[data-step='1']").first.click()
    page.wait_for_function(READY)
    assert page.locator(".card").first.get_attribute("id") == "t-t00050-r224"
    assert page.locator(".page-info").first.inner_text() == "page 2 of 100 (5000 trajectories)"
    page.select_option("#filter-status", "rejected")
    page.select_option("#filter-resolution", "336")
    page.wait_for_function(READY)
    expected = sum(r.status == "rejected" and r.view.resolution == 336 for r in records)
    assert page.locator(".page-info").first.inner_text() == f"page 1 of {-(-expected // 50)} ({expected} trajectories)"
    assert set(page.locator(".card .badge").all_inner_texts()) == {"rejected"}
    page.evaluate("mmcofReport.showPage(mmcofReport.pageCount() - 1)")
    assert page.locator(".card").count() == expected - 50 * (-(-expected // 50) - 1)
    page.select_option("#filter-question-type", "count")
    page.wait_for_function(READY)
    assert set(page.locator(".card header").all_inner_texts()) and all(
        "count" in text for text in page.locator(".card header").all_inner_texts())
    assert problems == []
    page.close()
