"""A full disk or a read-only output folder: one clear line, exit code 2, nothing half-written, and the same
command resumes once space is back.

Real mechanisms, not mocks: the run folder lives on a small tmpfs mounted in a private mount namespace
(`unshare --mount`; with `--user --map-root-user` when not root), so the kernel itself answers ENOSPC, and
`mount -o remount,ro` gives EROFS even to root (for whom `chmod 0o555` would not stop a write). The
namespace dies with the shell, so nothing stays mounted on the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mmcof_gen.store import RunStore
from tests.support.faults import CLI, assert_run_whole, run_cli, sign_reader_vlm, vlm_config_yaml
from tests.support.scripted_server import ScriptedServer

UNSHARE = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]


def ids(run: Path) -> set[str]:
    store = RunStore(run)
    return {t.id for t in store.trajectories()} | {e.id for e in store.errors()}


def in_namespace(script: str, mount: Path, save: Path, command: list[str]) -> None:
    """Run `script` (sh; $MNT is a fresh tmpfs mount point, $SAVE a folder on the real disk, "$@" the command)."""
    done = subprocess.run([*UNSHARE, "sh", "-c", script, "sh", *command], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "MNT": str(mount), "SAVE": str(save)})
    assert done.returncode == 0, done.stderr


def outcome(save: Path, name: str) -> tuple[int, str]:
    """(exit code, last stderr line) of the command run saved as `name`."""
    return int((save / f"{name}.rc").read_text()), (save / f"{name}.err").read_text().strip().splitlines()[-1]


RUN = 'run() { "$@" > "$SAVE/$NAME.out" 2> "$SAVE/$NAME.err"; echo $? > "$SAVE/$NAME.rc"; cp -a "$MNT/run" "$SAVE/$NAME"; }'


@pytest.fixture(scope="module")
def setup(sign_inputs, tmp_path_factory):
    """The synthesize command (its --out on the tmpfs) and the ids of an uninterrupted run on the real disk."""
    images, questions = sign_inputs
    folder = tmp_path_factory.mktemp("disk")
    with ScriptedServer(sign_reader_vlm) as server:
        config = vlm_config_yaml(folder / "vlm.yaml", server.url, resolutions=[448, 672])
        command = [*CLI, "synthesize", "--images", str(images), "--questions", str(questions), "--config", str(config)]
        reference = run_cli(*command[3:], "--out", folder / "reference")
        assert reference.returncode == 0, reference.stderr
        (folder / "mnt").mkdir()
        (folder / "save").mkdir()
        yield folder, command, ids(folder / "reference")


def test_disk_full_is_one_line_then_the_same_command_resumes(setup):
    folder, command, expected = setup
    mount, save = folder / "mnt", folder / "save"
    in_namespace(RUN + '''
        mount -t tmpfs -o size=32k tmpfs "$MNT" || exit 90
        NAME=full run "$@" --out "$MNT/run"
        mount -o remount,size=16m "$MNT"
        NAME=full_resumed run "$@" --out "$MNT/run"
    ''', mount, save, command)
    assert outcome(save, "full") == (2, f"mmcof-gen: cannot write to {mount}/run: No space left on device; free "
                                        "space or fix permissions, then re-run the same command to resume")
    full = save / "full"
    assert not list(full.glob(".*.tmp"))  # a failed atomic write removes its temporary file
    written = {path.name: [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]
               for path in full.glob("*.jsonl")}  # whole lines parse; after them at most a torn line being written
    decided = {record["id"] for name, records in written.items() if name != "tasks.jsonl" for record in records}
    assert 0 < len(decided) < len(expected) and decided <= expected

    assert outcome(save, "full_resumed")[0] == 0
    assert_run_whole(save / "full_resumed")
    assert ids(save / "full_resumed") == expected


def test_read_only_output_is_one_line_leaves_the_run_untouched_then_resumes(setup):
    folder, command, expected = setup
    mount, save = folder / "mnt", folder / "save"
    in_namespace(RUN + '''
        mount -t tmpfs -o size=16m tmpfs "$MNT" || exit 90
        NAME=partial run "$@" --out "$MNT/run" --limit 2
        mount -o remount,ro "$MNT"
        NAME=readonly run "$@" --out "$MNT/run"
        mount -o remount,rw "$MNT"
        NAME=ro_resumed run "$@" --out "$MNT/run"
    ''', mount, save, command)
    assert outcome(save, "partial")[0] == 0
    assert outcome(save, "readonly") == (2, f"mmcof-gen: cannot write to {mount}/run: Read-only file system; free "
                                            "space or fix permissions, then re-run the same command to resume")
    partial, readonly = save / "partial", save / "readonly"
    assert {p.name: p.read_bytes() for p in partial.iterdir()} == {p.name: p.read_bytes() for p in readonly.iterdir()}
    assert outcome(save, "ro_resumed")[0] == 0
    assert_run_whole(save / "ro_resumed")
    assert ids(save / "ro_resumed") == expected
