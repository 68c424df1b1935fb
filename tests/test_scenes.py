"""The demo scene generator: deterministic bytes, a sound manifest, and signs that OCR really reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mmcof_gen.answers import normalize_text
from mmcof_gen.scenes import GRID_MARGIN, PHOTOS_DIR, generate_scenes

COUNT = 2


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    out = tmp_path_factory.mktemp("scenes")
    paths = generate_scenes(out, count=COUNT, seed=0)
    return out, paths, json.loads((out / "scenes.json").read_text())


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_deterministic_and_idempotent(scenes, tmp_path):
    out, paths, _ = scenes
    first = _snapshot(out)
    assert [p.name for p in paths] == [f"scene_{i:03d}.jpg" for i in range(COUNT)]
    assert {f"photos/{p.name}" for p in PHOTOS_DIR.glob("*.jpg")} <= set(first)
    # same arguments into a fresh folder: same bytes
    generate_scenes(tmp_path, count=COUNT, seed=0)
    assert _snapshot(tmp_path) == first
    # re-running in place leaves the files untouched
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    generate_scenes(out, count=COUNT, seed=0)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes


def test_bundled_photos_are_small():
    photos = sorted(PHOTOS_DIR.glob("*.jpg"))
    assert len(photos) >= 2
    for photo in photos:
        assert photo.stat().st_size < 150_000


def test_manifest_boxes_inside_and_alone_in_cell(scenes):
    out, _, doc = scenes
    assert len(doc["scenes"]) == COUNT
    seen = set()
    for scene in doc["scenes"]:
        with Image.open(out / scene["file"]) as img:
            assert img.size == (scene["width"], scene["height"])
            assert 3000 <= img.width <= 4000
        w, h = scene["width"], scene["height"]
        assert 2 <= len(scene["signs"]) <= 4
        cells = [tuple(s["cell"]) for s in scene["signs"]]
        assert len(set(cells)) == len(cells), "two signs share a grid cell"
        texts = [normalize_text(s["text"]) for s in scene["signs"]]
        assert len(set(texts)) == len(texts)
        seen.update(texts)
        for sign in scene["signs"]:
            x0, y0, x1, y1 = sign["box"]
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            row, col = sign["cell"]
            # the whole plate lies in its cell, GRID_MARGIN of the image side inside every cell edge
            assert col * w / 3 + GRID_MARGIN * w <= x0 and x1 <= (col + 1) * w / 3 - GRID_MARGIN * w
            assert row * h / 3 + GRID_MARGIN * h <= y0 and y1 <= (row + 1) * h / 3 - GRID_MARGIN * h
    tiers = {s["tier"] for scene in doc["scenes"] for s in scene["signs"]}
    assert {"medium", "large", "small"} <= tiers


def test_ocr_reads_signs_at_full_resolution(scenes):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    engine = rapidocr.RapidOCR()
    out, _, doc = scenes
    scene = doc["scenes"][0]
    img = Image.open(out / scene["file"]).convert("RGB")
    for sign in scene["signs"]:
        # the 1024-px full-resolution tile centred on the sign
        x0, y0, x1, y1 = sign["box"]
        side = max(1024, x1 - x0 + 64, y1 - y0 + 64)
        tx = min(max(0, (x0 + x1) // 2 - side // 2), img.width - side)
        ty = min(max(0, (y0 + y1) // 2 - side // 2), img.height - side)
        # use_cls=False: signs are upright, and the 180-degree classifier flips words like "EXIT"
        results, _ = engine(np.array(img.crop((tx, ty, tx + side, ty + side))), use_cls=False)
        reads = {normalize_text(text): score for _, text, score in results or []}
        assert reads.get(normalize_text(sign["text"]), 0.0) >= 0.9, (sign, reads)


def test_missing_photos_leave_no_half_made_folder(tmp_path, monkeypatch):
    import mmcof_gen.scenes

    monkeypatch.setattr(mmcof_gen.scenes, "PHOTOS_DIR", tmp_path / "no-photos")
    with pytest.raises(FileNotFoundError, match="no bundled photos"):
        generate_scenes(tmp_path / "out", count=1)
    assert not (tmp_path / "out").exists()


def test_the_street_family_is_its_own_deterministic_scenes_in_other_fonts_and_plates(scenes, tmp_path):
    """`family="street"`: scenes the OCR rules were never tuned on, from random streams of their own (the demo
    family's bytes do not move), in the fonts and plate colours of the family."""
    from mmcof_gen.scenes import STREET_FONTS, STREET_PLATES, STREET_WORDS

    out, _, demo = scenes
    generate_scenes(tmp_path / "a", count=COUNT, seed=0, family="street")
    generate_scenes(tmp_path / "b", count=COUNT, seed=0, family="street")
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    doc = json.loads((tmp_path / "a" / "scenes.json").read_text())
    assert doc["family"] == "street" and "family" not in demo
    assert (tmp_path / "a" / "scene_000.jpg").read_bytes() != (out / "scene_000.jpg").read_bytes()
    signs = [sign for scene in doc["scenes"] for sign in scene["signs"]]
    assert signs and all(sign["font"] in STREET_FONTS for sign in signs)
    assert all(sign["text"].rsplit(" ", 1)[0] in STREET_WORDS or sign["text"] in STREET_WORDS for sign in signs)
    with Image.open(tmp_path / "a" / doc["scenes"][0]["file"]) as image:
        x0, y0, x1, y1 = doc["scenes"][0]["signs"][0]["box"]
        corner = np.asarray(image.convert("RGB").crop((x0 + 6, y0 + 6, x0 + 10, y0 + 10)), dtype=float).mean(axis=(0, 1))
    # the plate's colour (JPEG, noise and a few degrees of tilt aside) is one of the family's
    assert min(np.abs(corner - plate).max() for plate, _ in STREET_PLATES) < 40
