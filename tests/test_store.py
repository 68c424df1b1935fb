import json

import pytest

from mmcof_gen.schema import ErrorRecord
from mmcof_gen.store import RunStore, StoreError, read_jsonl, repair_torn_tail


def _error(i: int) -> ErrorRecord:
    return ErrorRecord(id=f"e{i}", stage="image", image=f"img{i}.jpg", reason="unreadable")


def test_records_round_trip_and_count_as_done(tmp_path):
    store = RunStore.open(tmp_path / "run", "fp1", {"tool": "mmcof-gen"})
    for i in range(3):
        store.append(_error(i))
    store.close()
    assert [e.id for e in store.errors()] == ["e0", "e1", "e2"]
    assert store.done_ids() == {"e0", "e1", "e2"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["fingerprint"] == "fp1" and manifest["tool"] == "mmcof-gen"


def test_torn_last_line_is_cut_and_kept_aside(tmp_path):
    store = RunStore.open(tmp_path / "run", "fp1", {})
    store.append(_error(0))
    store.close()
    path = tmp_path / "run" / "errors.jsonl"
    with path.open("a") as handle:
        handle.write('{"id": "e1", "stage": "ima')  # killed mid-write
    reopened = RunStore.open(tmp_path / "run", "fp1", {})
    assert [e.id for e in reopened.errors()] == ["e0"]
    assert path.read_text().endswith("\n")
    assert (tmp_path / "run" / "errors.jsonl.torn").read_text() == '{"id": "e1", "stage": "ima\n'
    assert repair_torn_tail(path) is False  # already whole


def test_run_made_with_another_config_is_refused(tmp_path):
    RunStore.open(tmp_path / "run", "fp1", {})
    with pytest.raises(StoreError, match="another config"):
        RunStore.open(tmp_path / "run", "fp2", {})


def test_non_empty_folder_without_manifest_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "precious.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not empty"):
        RunStore.open(tmp_path / "run", "fp1", {})
    assert (tmp_path / "run" / "precious.txt").read_text() == "keep me"


def test_corrupt_middle_line_names_file_and_line(tmp_path):
    path = tmp_path / "errors.jsonl"
    path.write_text(_error(0).model_dump_json() + "\nnot json\n")
    with pytest.raises(StoreError, match=r"errors.jsonl:2"):
        list(read_jsonl(path, ErrorRecord))


def test_resume_keeps_created_time(tmp_path):
    RunStore.open(tmp_path / "run", "fp1", {"created": "then"})
    first = json.loads((tmp_path / "run" / "manifest.json").read_text())["created"]
    RunStore.open(tmp_path / "run", "fp1", {"created": "now"})
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["created"] == first


def test_a_shard_is_its_writers_own_and_readers_take_every_shard(tmp_path):
    driver = RunStore.open(tmp_path / "run", "fp1", {})
    driver.append(_error(0))
    shard = RunStore.open_shard(tmp_path / "run", "w1")
    shard.append(_error(1))
    driver.close(), shard.close()
    assert sorted(p.name for p in (tmp_path / "run").glob("*.jsonl")) == ["errors-w1.jsonl", "errors.jsonl"]
    assert sorted(e.id for e in RunStore(tmp_path / "run").errors()) == ["e0", "e1"]


def test_a_restarted_shard_writer_cuts_the_torn_line_of_its_killed_life(tmp_path):
    RunStore.open(tmp_path / "run", "fp1", {})
    path = tmp_path / "run" / "errors-w0.jsonl"
    path.write_text(_error(0).model_dump_json() + "\n" + '{"id": "e1", "sta')
    shard = RunStore.open_shard(tmp_path / "run", "w0")
    shard.append(_error(2))
    shard.close()
    assert [e.id for e in read_jsonl(path, ErrorRecord)] == ["e0", "e2"]


def test_a_shard_outside_a_run_folder_says_the_folder_must_be_shared(tmp_path):
    with pytest.raises(StoreError, match="filesystem that every node mounts"):
        RunStore.open_shard(tmp_path / "elsewhere", "w0")


def test_records_since_reads_only_whole_lines_appended_after_the_mark(tmp_path):
    RunStore.open(tmp_path / "run", "fp1", {})
    shard = RunStore.open_shard(tmp_path / "run", "w0")
    shard.append(_error(0))
    mark = shard.sizes()
    shard.append(_error(1))
    shard.append(_error(2))
    shard.close()
    path = tmp_path / "run" / "errors-w0.jsonl"
    with path.open("a") as handle:
        handle.write('{"id": "e3", "sta')  # being written, or torn by a kill
    assert [r.id for r in shard.records_since(mark)] == ["e1", "e2"]
    inside_a_line = {path: mark[path] - 5}
    assert [r.id for r in shard.records_since(inside_a_line)] == ["e1", "e2"]
    assert [r.id for r in shard.records_since({})] == ["e0", "e1", "e2"]


def test_a_resume_sets_transient_errors_aside_and_keeps_permanent_ones(tmp_path):
    store = RunStore.open(tmp_path / "run", "fp1", {})
    store.append(_error(0))
    store.append(_error(1).model_copy(update={"transient": True, "reason": "worker died twice"}))
    store.close()
    assert store.done_ids() == {"e0", "e1"}  # this run does not try it again
    resumed = RunStore.open(tmp_path / "run", "fp1", {})
    assert [(e.id, e.transient) for e in resumed.errors()] == [("e0", False)]
    assert resumed.done_ids() == {"e0"}  # the resume does
    [retried] = read_jsonl(tmp_path / "run" / "retried-errors.jsonl", ErrorRecord)
    assert (retried.id, retried.reason) == ("e1", "worker died twice")
    assert json.loads((tmp_path / "run" / "errors.jsonl").read_text())["transient"] is False  # every record says


def _inputs(images, **more) -> dict:
    return {"inputs": {"images": str(images), "source": "folder", "questions": None, "questions_sha256": None,
                       "coco": None, "coco_sha256": None, **more}}


def test_a_run_made_from_other_inputs_is_refused_and_its_inputs_are_never_rewritten(tmp_path):
    run = tmp_path / "run"
    RunStore.open(run, "fp1", _inputs("/data/a"))
    with pytest.raises(StoreError) as refused:
        RunStore.open(run, "fp1", _inputs("/data/b"))
    assert str(refused.value) == (f"{run} was made from --images /data/a, not /data/b; pass a new --out to start a run "
                                  "from these images, or add --relocated if the same images moved there")
    with pytest.raises(StoreError) as refused:
        RunStore.open(run, "fp1", _inputs("/data/a", source="questions", questions="/q.jsonl", questions_sha256="ab" * 32))
    assert str(refused.value) == (f"{run} was made from --images /data/a (source folder), not --images /data/a "
                                  "--questions /q.jsonl (sha256 abababababab) (source questions); pass a new --out to "
                                  "start a run from these inputs")
    assert json.loads((run / "manifest.json").read_text())["inputs"] == _inputs("/data/a")["inputs"]


def test_a_relocated_images_folder_is_taken_once_its_images_are_the_same(tmp_path):
    from mmcof_gen.imaging import file_sha256
    from mmcof_gen.schema import ImageTasks

    for folder, content in (("a", b"one"), ("moved", b"one"), ("other", b"two")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.png").write_bytes(content)
    run = tmp_path / "run"
    store = RunStore.open(run, "fp1", _inputs(tmp_path / "a"))
    store.append(ImageTasks(id="x.png", image="x.png", image_sha256=file_sha256(tmp_path / "a" / "x.png"), width=1,
                            height=1, tasks=[]))
    store.close()
    with pytest.raises(StoreError) as refused:
        RunStore.open(run, "fp1", _inputs(tmp_path / "other"), relocated=True)
    assert str(refused.value) == (f"--relocated: {tmp_path / 'other' / 'x.png'} is not the image the run made tasks "
                                  f"for (x.png in {tmp_path / 'a'}); pass the folder the images moved to")
    RunStore.open(run, "fp1", _inputs(tmp_path / "moved"), relocated=True)
    RunStore.open(run, "fp1", _inputs(tmp_path / "moved"))  # from now on the run's images are there
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["inputs"]["images"] == str(tmp_path / "a")
    assert [r["images"] for r in manifest["relocations"]] == [str(tmp_path / "moved")]


def test_out_pointing_at_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match=r"^--out .*file is a file, not a folder; pass a new folder for the run$"):
        RunStore.open(tmp_path / "file", "fp1", {})


OLD_MANIFEST = {  # a manifest written before inputs.source, relocations and servers were recorded
    "tool": "mmcof-gen", "fingerprint": "fp-old", "created": "2026-01-01T00:00:00+00:00",
    "config": {"images": {"max_pixels": 1000000}}, "inputs": {"images": "/data/images", "questions": None},
    "versions": {"mmcof-gen": "0.0.1"}, "retired_field": [1, 2],
}


def test_an_old_manifest_loads_with_the_defaults_and_writes_back_unchanged(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps(OLD_MANIFEST))
    manifest = RunStore(tmp_path).manifest()
    assert (manifest.fingerprint, manifest.images_folder, manifest.max_pixels) == ("fp-old", "/data/images", 1000000)
    assert (manifest.inputs.source, manifest.relocations, manifest.filter) == ("folder", [], None)
    assert manifest.tasks_kind is None  # not recorded: stats reads it from the tasks
    assert manifest.dump() == OLD_MANIFEST


def test_the_images_folder_is_the_last_relocation(tmp_path):
    relocated = {**OLD_MANIFEST, "relocations": [{"images": "/a", "at": "t1"}, {"images": "/b", "at": "t2"}],
                 "inputs": {"images": "/data/images", "source": "questions"}}
    (tmp_path / "manifest.json").write_text(json.dumps(relocated))
    manifest = RunStore(tmp_path).manifest()
    assert (manifest.images_folder, manifest.tasks_kind) == ("/b", "given")


def test_a_manifest_that_does_not_parse_names_the_file(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"inputs": "not an object"}))
    with pytest.raises(StoreError, match="manifest.json is not a valid manifest"):
        RunStore(tmp_path).manifest()
