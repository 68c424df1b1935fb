"""Hostile inputs end to end: a decompression bomb, broken images, symlinks and paths that lead out of the
images folder, unicode and spaces in names, a 10 MB question, and a model that emits NaN, negative and huge
boxes. Each becomes a clear record; the run finishes; nothing is read from outside the images folder and
nothing is written outside --out."""

from __future__ import annotations

import functools
import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from mmcof_gen.store import RunStore
from tests.support.faults import assert_run_whole, run_cli, sign_reader_vlm, vlm_config_yaml, write_sign_image
from tests.support.scripted_server import ScriptedServer

SIGN = (300, 200, 340, 230)
UNICODE_NAME = "ünï cödé/Straße café 1.png"
NAN, INF = float("nan"), float("inf")
BAD_BOXES = ([NAN, 0, 10, 10], [-50, -40, -10, -5], [0, 0, 10**30, 5], [0, 0, INF, 5])


def png_header_bomb(path: Path, width: int, height: int) -> None:
    """A valid PNG signature and IHDR claiming width x height pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def tree(root: Path, skip: set[Path]) -> dict[str, tuple]:
    """Every path under `root` (links not followed) with its type, size, mode and mtime, minus `skip`."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for name in dirnames + filenames:
            info = os.lstat(Path(dirpath, name))
            found[str(Path(dirpath, name).relative_to(root))] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    outside = root / "outside"
    write_sign_image(outside / "sign.png", (640, 480), SIGN, seed=7)
    images = root / "images"
    write_sign_image(images / UNICODE_NAME, (640, 480), SIGN, seed=8)
    png_header_bomb(images / "bomb.png", 100_000, 100_000)
    whole = (images / UNICODE_NAME).read_bytes()
    (images / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (images / "zero.png").write_bytes(b"")
    (images / "text.png").write_text("a text file wearing an image's name\n")
    os.symlink(outside / "sign.png", images / "leak.png")
    os.symlink(outside, images / "outside_dir")

    def ask(image: str, question: str = "What colour is the small sign?", **extra) -> str:
        return json.dumps({"image": image, "question": question, "answer": "red", **extra}, ensure_ascii=False)

    lines = [ask(UNICODE_NAME, bbox=list(SIGN)), ask("bomb.png"), ask("truncated.png"), ask("zero.png"),
             ask("text.png"), ask("leak.png"), ask("outside_dir/sign.png"), ask("../outside/sign.png"),
             ask(str(outside / "sign.png")), ask("/etc/passwd"), ask(UNICODE_NAME, "Why? " + "x" * 10_000_000),
             ask(UNICODE_NAME, "NaN box?", bbox=[NAN, 0, 10, 10]),
             ask(UNICODE_NAME, "Negative box?", bbox=[-5, -5, 10, 10]),
             ask(UNICODE_NAME, "Huge box?", bbox=[0, 0, 10**30, 5]), "{not json at all"]
    questions = root / "questions file.jsonl"
    questions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "cwd").mkdir()

    with ScriptedServer(functools.partial(sign_reader_vlm, bad_boxes=BAD_BOXES)) as server:
        config = vlm_config_yaml(root / "vlm.yaml", server.url, max_steps=8)
        before = tree(root, set())
        done = run_cli("synthesize", "--images", images, "--questions", questions, "--config", config,
                       "--out", root / "run", cwd=root / "cwd")
    exported = run_cli("export", root / "run", "--out", root / "export", cwd=root / "cwd")
    return root, before, done, exported


def test_hostile_run_finishes_and_writes_nothing_outside_out(hostile):
    root, before, done, exported = hostile
    assert done.returncode == 0, done.stderr
    assert exported.returncode == 0, exported.stderr
    assert tree(root, {root / "run", root / "export"}) == before  # inputs, links, outside folder, cwd: untouched
    assert_run_whole(root / "run")


def test_each_hostile_input_is_a_clear_error_record(hostile):
    root = hostile[0]
    errors = {e.image: e.reason for e in RunStore(root / "run").errors()}
    outside_refusal = "points outside the images folder; refused"
    assert errors["bomb.png"].endswith("bomb.png is 100000x100000 = 10,000,000,000 pixels, over the limit of "
                                       "250,000,000 (images.max_pixels guards against decompression bombs; raise "
                                       "it if the image is genuine)")
    assert "truncated.png: corrupt or truncated" in errors["truncated.png"]
    assert errors["zero.png"].endswith("zero.png: the file is empty (0 bytes)")
    assert errors["text.png"].endswith("text.png: not an image, or a format Pillow cannot decode")
    for name in ("leak.png", "outside_dir/sign.png", "../outside/sign.png", str(root / "outside" / "sign.png"),
                 "/etc/passwd"):
        assert errors[name].endswith(f"image {name!r} {outside_refusal}"), errors[name]
    assert errors["questions file.jsonl:15"] == ("questions file.jsonl:15: not a valid question line: Expecting "
                                                 "property name enclosed in double quotes: line 1 column 2 (char 1)")
    assert errors["questions file.jsonl:11"] == ("questions file.jsonl:11: not a valid question line: question: "
                                                 "String should have at most 2000 characters")
    assert errors["questions file.jsonl:12"].startswith(
        "questions file.jsonl:12: not a valid question line: bbox.tuple[int, int, int, int].0: Input should be a "
        "finite number")
    by_question = {e.reason.split("'")[1]: e.reason for e in RunStore(root / "run").errors() if e.stage == "tasks"
                   and e.reason.startswith("bbox of question")}
    assert by_question == {
        "Negative box?": "bbox of question 'Negative box?': box [-5, -5, 10, 10] is outside the 640x480 image "
                         "(x must be within 0..640, y within 0..480)",
        "Huge box?": f"bbox of question 'Huge box?': box [0, 0, {10**30}, 5] is outside the 640x480 image "
                     "(x must be within 0..640, y within 0..480)"}
    assert len(list(RunStore(root / "run").errors())) == 14  # every line but the first is refused


def test_nan_negative_and_huge_model_boxes_are_observations_and_the_chain_is_still_found(hostile):
    root = hostile[0]
    [trajectory] = [t for t in RunStore(root / "run").trajectories() if t.task.question.startswith("What")]
    assert trajectory.task.image == UNICODE_NAME
    assert trajectory.status == "accepted"
    locate = trajectory.steps[2]
    assert locate.observation.startswith("ignored: box [nan, 0, 10, 10] has nan, which is not a finite number; "
                                         "box [-50, -40, -10, -5] is outside the 504x364 image")
    zooms = [s.observation for s in trajectory.steps if s.action == "zoom" and s.box is None]
    assert zooms == [
        "invalid box: box [nan, 0, 10, 10] has nan, which is not a finite number",
        "invalid box: box [-50, -40, -10, -5] is outside the 504x364 image (x must be within 0..504, y within 0..364)",
        f"invalid box: box [0, 0, {10**30}, 5] is outside the 504x364 image (x must be within 0..504, y within 0..364)",
        "invalid box: box [0, 0, inf, 5] has inf, which is not a finite number"]
    assert all(0 <= v <= 504 for step in trajectory.chain for v in step.box)
    samples = json.loads((root / "export" / "mmcof.json").read_text(encoding="utf-8"))
    assert [s["id"] for s in samples] == [trajectory.id]
    assert all((root / "export" / image).is_file() for image in samples[0]["images"])
