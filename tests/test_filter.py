import json

import pytest

from mmcof_gen.config import FilterConfig
from mmcof_gen.filtering import balance_drops, filter_run, unbalanced_tag
from mmcof_gen.store import RunStore, StoreError
from tests.support.runs import count_frame_rebuilds, make_trajectory, write_noise_image, write_run


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    write_noise_image(root / "a.png", (600, 400), seed=1)  # frame at R=448: 532x364
    write_noise_image(root / "b.png", (500, 500), seed=2)  # frame at R=448: 448x448
    write_noise_image(root / "sa_000123.png", (500, 500), seed=3)
    return root


def dropped(report):
    return {(r["id"], r["rule"], r["reason"]) for r in report["dropped_records"]}


def test_filter_drops_exactly_the_planted_bad_records_with_their_reasons(tmp_path, images):
    good = [make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150), (50, 40, 120, 90)]),
            make_trajectory(images, "a.png", 448, question="What is on the door?"),
            make_trajectory(images, "b.png", 448, boxes=[(100, 100, 200, 200)])]
    unbalanced = make_trajectory(images, "b.png", 448, boxes=[(10, 10, 60, 60)], question="Which word?",
                                 thoughts=["The word </think> is small."])
    outside = make_trajectory(images, "b.png", 448, boxes=[(400, 400, 460, 440)], question="Which number?")
    duplicate = make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150), (50, 40, 120, 90)])
    excluded = make_trajectory(images, "sa_000123.png", 448, boxes=[(10, 10, 60, 60)])
    run = write_run(tmp_path / "run", images, [*good, unbalanced, outside, duplicate, excluded])
    before = (run / "trajectories.jsonl").read_bytes()
    (tmp_path / "exclude.txt").write_text("# V* images\nsa_000123\n")

    report = filter_run(run, tmp_path / "kept", FilterConfig(exclude_file=tmp_path / "exclude.txt"))

    assert dropped(report) == {
        (unbalanced.id, "format", "message 2 (assistant): unbalanced </think>"),
        (outside.id, "box_validity", "zoom 1 box [400, 400, 460, 440] is invalid in the 448x448 frame: "
                                     "box [400, 400, 460, 440] is outside the 448x448 image "
                                     "(x must be within 0..448, y within 0..448)"),
        (duplicate.id, "duplicate", f"duplicate of {good[0].id} (same frame pixels and question)"),
        (excluded.id, "contamination", "image sa_000123.png is on the exclusion list (as 'sa_000123')"),
    }
    assert (report["total"], report["kept"]) == (7, 3)
    assert report["rules"]["format"] == {"enabled": True, "dropped": 1, "examples": [unbalanced.id]}
    assert [t.id for t in RunStore(tmp_path / "kept").trajectories()] == [t.id for t in good]
    assert (run / "trajectories.jsonl").read_bytes() == before  # the input is never modified
    manifest = json.loads((tmp_path / "kept" / "manifest.json").read_text())
    assert manifest["filter"]["kept"] == 3 and manifest["counts"]["accepted"] == 3
    assert json.loads((tmp_path / "kept" / "filter_report.json").read_text())["dropped"] == 4


def test_duplicate_keys_on_the_frame_so_one_image_smaller_than_two_budgets_makes_one_sample(tmp_path, images):
    write_noise_image(images / "c.png", (300, 300), seed=4)  # the same 308x308 frame at R=448 and R=672
    small = [make_trajectory(images, "c.png", r, boxes=[(10, 10, 100, 100)]) for r in (448, 672)]
    large = [make_trajectory(images, "a.png", r, boxes=[(10, 10, 100, 100)]) for r in (448, 672)]
    assert small[0].view.frame_sha256 == small[1].view.frame_sha256
    run = write_run(tmp_path / "run", images, [*small, *large])
    report = filter_run(run, tmp_path / "kept", FilterConfig())
    assert dropped(report) == {(small[1].id, "duplicate", f"duplicate of {small[0].id} (same frame pixels and question)")}


def test_verified_box_size_and_chain_length_rules_give_their_reasons(tmp_path, images):
    rejected = make_trajectory(images, "a.png", 448, status="rejected", correct=False)
    tiny = make_trajectory(images, "a.png", 448, boxes=[(10, 10, 14, 60)], question="Tiny?")
    huge = make_trajectory(images, "b.png", 448, boxes=[(0, 0, 448, 440)], question="Huge?")
    long = make_trajectory(images, "b.png", 448, boxes=[(10, 10, 100, 100)] * 3, question="Long?")
    run = write_run(tmp_path / "run", images, [rejected, tiny, huge, long])

    report = filter_run(run, tmp_path / "kept", FilterConfig(max_zooms=2))

    assert dropped(report) == {
        (rejected.id, "verified", "rejected at synthesis: not found: no text in the region"),
        (tiny.id, "box_size", "zoom 1 box [10, 10, 14, 60] is smaller than 8 px on a side"),
        (huge.id, "box_size", "zoom 1 box [0, 0, 448, 440] covers 98% of the frame (more than 90%)"),
        (long.id, "chain_length", "3 zooms, outside [0, 2]"),
    }


def test_reexecution_drops_changed_images_and_crops_that_miss_the_evidence(tmp_path, images):
    changed = make_trajectory(images, "b.png", 448, boxes=[(10, 10, 60, 60)])
    write_noise_image(images / "b.png", (500, 500), seed=99)  # the image changed after synthesis
    # gt box (original px 500..560 x 300..340) -> frame px 443..497 x 266..302; `missed` zooms elsewhere
    missed = make_trajectory(images, "a.png", 448, boxes=[(10, 10, 60, 60)], gt_boxes=[(500, 300, 560, 340)])
    hit = make_trajectory(images, "a.png", 448, boxes=[(440, 262, 500, 305)], gt_boxes=[(500, 300, 560, 340)],
                          question="Where?")
    run = write_run(tmp_path / "run", images, [changed, missed, hit])

    report = filter_run(run, tmp_path / "kept", FilterConfig())

    assert dropped(report) == {
        (changed.id, "reexecution", f"the frame rebuilt from {images / 'b.png'} differs from the one synthesised "
                                    "(the image or the resize code changed)"),
        (missed.id, "reexecution", "the last crop shows 0% of the ground-truth box (at least 50% needed)"),
    }


def test_reexecution_rebuilds_each_frame_once_when_its_trajectories_lie_far_apart(tmp_path, images, monkeypatch):
    # a run written by several workers interleaves images: a and b alternate, far more than a batch apart
    spread = [make_trajectory(images, name, 448, question=f"Which sign, number {n}?")
              for n in range(20) for name in ("a.png", "b.png")]
    tampered = make_trajectory(images, "a.png", 448, question="Which door?")
    tampered = tampered.model_copy(update={"view": tampered.view.model_copy(update={"frame_sha256": "0" * 64})})
    run = write_run(tmp_path / "run", images, [*spread, tampered])
    rebuilt = count_frame_rebuilds(monkeypatch)

    report = filter_run(run, tmp_path / "kept", FilterConfig())

    assert rebuilt == [("a.png", [448]), ("b.png", [448])]
    assert dropped(report) == {(tampered.id, "reexecution", f"the frame rebuilt from {images / 'a.png'} differs from "
                                                             "the one synthesised (the image or the resize code changed)")}


def test_rules_switched_off_keep_what_they_would_drop(tmp_path, images):
    unbalanced = make_trajectory(images, "b.png", 448, boxes=[(10, 10, 60, 60)], thoughts=["a <answer> tag"])
    run = write_run(tmp_path / "run", images, [unbalanced])
    assert filter_run(run, tmp_path / "on", FilterConfig())["kept"] == 0
    assert filter_run(run, tmp_path / "off", FilterConfig(format=False))["kept"] == 1


def test_balance_downsamples_the_larger_side_deterministically():
    survivors = [(i, f"d{i}", (448, "text"), True) for i in range(6)] + [(6, "z6", (448, "text"), False),
                                                                          (7, "z7", (448, "text"), False)]
    survivors.append((8, "d8", (1920, "text"), True))  # a group with no zoom samples is left alone
    config = FilterConfig(balance=True, direct_fraction=0.5, seed=0)
    drops = balance_drops(survivors, config)
    assert len(drops) == 4 and set(drops) < set(range(6))
    assert drops == balance_drops(list(reversed(survivors)), config)  # independent of input order
    assert drops[min(drops)] == "balance: direct sample down-sampled in group R=448, text (target direct fraction 0.50)"
    assert len(balance_drops(survivors, FilterConfig(balance=True, direct_fraction=0.25))) == 5  # 1 direct : 2 zoom
    few_direct = [(0, "d0", (448, "text"), True)] + [(i, f"z{i}", (448, "text"), False) for i in range(1, 5)]
    assert sorted(balance_drops(few_direct, config).values())[0].startswith("balance: zoom sample down-sampled")
    assert len(balance_drops(few_direct, config)) == 3


def test_filter_refuses_its_input_and_foreign_folders_and_reruns_into_its_own(tmp_path, images):
    run = write_run(tmp_path / "run", images, [make_trajectory(images, "a.png", 448)])
    with pytest.raises(StoreError, match="is the input folder; filter never modifies its input"):
        filter_run(run, run, FilterConfig())
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="is not empty and holds no earlier filter output"):
        filter_run(run, tmp_path / "foreign", FilterConfig())
    first = filter_run(run, tmp_path / "kept", FilterConfig())
    again = filter_run(run, tmp_path / "kept", FilterConfig())
    assert first["kept"] == again["kept"] == 1
    assert len(list(RunStore(tmp_path / "kept").trajectories())) == 1


def test_tag_balance_is_checked_in_order():
    assert unbalanced_tag("<think> a </think>\n<answer> b </answer>") is None
    assert unbalanced_tag("<think> a <think> b </think>") == "<think>"
    assert unbalanced_tag("</answer> <answer>") == "</answer>"
    assert unbalanced_tag("<think> a") == "<think>"


def test_filter_and_export_commands_print_their_reports(tmp_path, images):
    import subprocess
    import sys

    run = write_run(tmp_path / "run", images, [make_trajectory(images, "a.png", 448, boxes=[(10, 10, 200, 150)]),
                                               make_trajectory(images, "b.png", 448, status="rejected")])
    cli = [sys.executable, "-m", "mmcof_gen.cli"]
    kept = subprocess.run([*cli, "filter", run, "--out", tmp_path / "kept"], capture_output=True, text=True)
    assert kept.returncode == 0, kept.stderr
    assert f"kept 1 of 2; results in {tmp_path / 'kept'}" in kept.stdout and "verified" in kept.stdout
    (tmp_path / "system.txt").write_text("Zoom when needed.\n")
    exported = subprocess.run([*cli, "export", tmp_path / "kept", "--out", tmp_path / "out", "--format", "swift",
                               "--system-prompt", tmp_path / "system.txt"], capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.startswith(f"1 samples (0 direct, 1 zoom), 0 dropped; {tmp_path / 'out' / 'mmcof_swift.jsonl'}")
    assert "vLLM: --limit-mm-per-prompt '{\"image\": 2}'" in exported.stdout
    assert json.loads((tmp_path / "out" / "mmcof_swift.jsonl").read_text())["messages"][0]["content"] == "Zoom when needed."
    refused = subprocess.run([*cli, "export", tmp_path / "kept", "--out", run], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (f"mmcof-gen: --out {run} is not empty and holds no earlier export; "
                                      "pass a new or empty folder")
