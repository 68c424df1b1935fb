"""The run folder: append-only JSONL records, an atomic manifest, and the resume index.

Layout of a run folder:
    manifest.json        config snapshot, versions, prompt hashes, inputs, counts (rewritten atomically)
    tasks.jsonl          one `ImageTasks` per image, so a resume never synthesises tasks twice
    trajectories.jsonl   one `Trajectory` per (task, resolution)
    errors.jsonl         one `ErrorRecord` per failed image or search, with its reason (transient or permanent)
    retried-errors.jsonl transient errors a resume set aside to try their work again (kept for the record)
    *-<shard>.jsonl      the same three, written by one Ray agent actor each (`-w0`, `-w1`, ...)

Readers take every shard of a kind (`tasks*.jsonl`, ...), so a run folder reads the same whoever wrote it.

Every record is flushed and fsync'd before the next one, so a killed process loses at most the line it
was writing; that torn tail is cut off (and kept beside the file as `*.torn`) when the file is next opened.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from mmcof_gen.schema import ErrorRecord, ImageTasks, Manifest, ManifestInputs, Trajectory

MANIFEST = "manifest.json"
TASKS = "tasks.jsonl"
RETRIED = "retried-errors.jsonl"
KINDS = {ImageTasks: "tasks", Trajectory: "trajectories", ErrorRecord: "errors"}

Record = TypeVar("Record", bound=BaseModel)


class StoreError(RuntimeError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def repair_torn_tail(path: Path) -> bool:
    """Cut a last line without its newline (a write killed half-way); keep the fragment in `<file>.torn`."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return False
        handle.seek(0)
        data = handle.read()
        keep = data.rfind(b"\n") + 1
        with path.with_name(path.name + ".torn").open("ab") as torn:
            torn.write(data[keep:] + b"\n")
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
    return True


def jsonl_lines(path: Path, errors: str = "strict") -> Iterator[tuple[int, str]]:
    """The one JSONL line reader: each line that is not blank, with its number (from 1) for a message that
    names `file:line`; the caller parses it and decides what a bad line means."""
    with path.open(encoding="utf-8", errors=errors) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield number, line


def read_jsonl(path: Path, model: type[Record]) -> Iterator[Record]:
    """Records of one JSONL file; a line that does not parse names the file and line."""
    if not path.exists():
        return
    for number, line in jsonl_lines(path):
        try:
            yield model.model_validate_json(line)
        except ValueError as exc:
            raise StoreError(f"{path}:{number} is not a valid {model.__name__} record: {exc}") from None


class AtomicFile:
    """The one way a command writes a file that readers trust: at `tmp` (`.<name>.<pid>.tmp` beside `path`),
    then `commit` fsyncs it and renames it over `path`, so `path` holds the old content or the new, whole.

    One durability rule for every such file: the data is fsync'd before the rename. A file system may put
    the rename on disk before the data it names (ext4, xfs), and a power cut would leave an empty or torn
    file under the final name, which nothing repairs: a resume trusts the manifest, and content-addressed
    files (export images, report thumbnails) are never rewritten once they exist. The folder is not
    fsync'd: a lost rename leaves the previous file, which the next run rewrites.

    As a context manager it yields `tmp` and commits on success. A failed write (disk full) removes `tmp`;
    a killed one leaves it, and `remove_temporaries` clears it on the re-run.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")

    def sync(self) -> None:
        with self.tmp.open("r+b") as handle:
            os.fsync(handle.fileno())

    def commit(self) -> None:
        try:
            self.sync()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def write_temporary(path: Path, data: bytes) -> Path:
    """`data` in `path`'s temporary file, fsync'd (see `AtomicFile`), for a caller that links it into place."""
    file = AtomicFile(path)
    try:
        file.tmp.write_bytes(data)
        file.sync()
    except BaseException:
        file.discard()
        raise
    return file.tmp


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, whole or not at all (see `AtomicFile`)."""
    with AtomicFile(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, data: dict) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def remove_temporaries(folder: Path, name: str = "*") -> None:
    """Delete the temporary files (`.<name>.<pid>.tmp`) that killed atomic writes left in `folder`."""
    for stale in Path(folder).glob(f".{name}.*.tmp"):
        stale.unlink(missing_ok=True)


def claim_out_dir(run_dir: Path, out_dir: Path, marker: str, *, is_input: str, earlier: str,
                  overwrite: bool = False) -> None:
    """Make `out_dir` the output folder of a command reading `run_dir` (filter, export, view): never its input
    and never a folder someone else filled. A folder holding `marker` is this command's earlier output: made
    from the same source (an interrupted or repeated run), it is taken again and what that run was writing
    (its temporaries) removed; made from another source, it is refused unless `overwrite`, which first
    removes the files that output recorded writing (`record_output`), and only those.

    `is_input`: the end of the refusal when `out_dir` is `run_dir`; `earlier`: what the marker stands for.
    """
    source = str(run_dir.resolve())
    if out_dir.resolve() == run_dir.resolve():
        raise StoreError(f"--out {out_dir} is the {is_input}")
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"--out {out_dir} is a file, not a folder; pass a new or empty folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / marker).exists():
        raise StoreError(f"--out {out_dir} is not empty and holds no earlier {earlier}; pass a new or empty folder")
    if (out_dir / marker).exists():
        made = json.loads((out_dir / marker).read_text(encoding="utf-8"))
        if made.get("source") != source and not overwrite:
            raise StoreError(f"--out {out_dir} holds the {earlier} of {made.get('source')}, not of {source}; pass a "
                             "new --out, or --overwrite to replace it")
        if made.get("source") != source:
            _remove_recorded(out_dir, made, earlier)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / marker).write_text(json.dumps({"source": source}) + "\n", encoding="utf-8")
    except OSError as exc:
        raise StoreError(f"cannot create --out {out_dir}: {exc.strerror}") from None
    remove_temporaries(out_dir)


def record_output(out_dir: Path, marker: str, run_dir: Path, beside: tuple[Path, ...] = ()) -> None:
    """Write into `marker` what the command wrote: every file in `out_dir` (a folder `claim_out_dir` made
    its own), and `beside` it; so that an --overwrite by an output of another source removes exactly these."""
    files = [path for path in out_dir.rglob("*") if path.is_file() and path.name != marker]
    written = sorted({os.path.relpath(path, out_dir) for path in [*files, *beside]})
    write_json_atomic(out_dir / marker, {"source": str(Path(run_dir).resolve()), "files": written})


def _remove_recorded(out_dir: Path, made: dict, earlier: str) -> None:
    if "files" not in made:
        raise StoreError(f"--out {out_dir} holds an unfinished {earlier} of {made.get('source')} that recorded no "
                         "files; pass a new --out (or empty the folder yourself)")
    for name in made["files"]:
        (out_dir / name).unlink(missing_ok=True)
    for folder in sorted((p for p in out_dir.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()  # emptied by the removal above


def unwritable(folder: Path, exc: OSError) -> StoreError:
    """The one-line error of a full disk or a read-only folder; what was written stays and is resumed."""
    return StoreError(f"cannot write to {folder}: {exc.strerror or exc}; free space or fix permissions, "
                      "then re-run the same command to resume")


class RunStore:
    """One run folder. Thread-safe appends; `shard` names this writer's files (one per Ray agent actor)."""

    def __init__(self, root: Path, shard: str | None = None):
        self.root = Path(root)
        self.paths = {kind: self.root / f"{name}{f'-{shard}' if shard else ''}.jsonl" for kind, name in KINDS.items()}
        self._lock = threading.Lock()
        self._handles: dict[Path, object] = {}

    # -- opening ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path, fingerprint: str, manifest: Manifest | dict, relocated: bool = False) -> RunStore:
        """Create a run folder, or reopen one made with the same fingerprint and inputs (a resume).

        A folder with other content, or a run made with another config or other inputs, is refused: nothing
        is ever silently overwritten or mixed. The inputs a run was made from are never rewritten; a moved
        images folder (`relocated`) is recorded beside them once its images are checked to be the same.
        A resume writes what `manifest` sets over the run's manifest, its creation and inputs aside.
        """
        root = Path(root)
        manifest = Manifest.model_validate(manifest)
        manifest_path = root / MANIFEST
        if root.exists() and not root.is_dir():
            raise StoreError(f"--out {root} is a file, not a folder; pass a new folder for the run")
        if manifest_path.exists():
            old = cls(root).manifest()
            if old.fingerprint != fingerprint:
                raise StoreError(
                    f"{root} holds a run made with another config or prompts (fingerprint "
                    f"{old.fingerprint} != {fingerprint}); pass a new --out folder to start a new run"
                )
            given = manifest.model_fields_set
            relocations = _same_inputs(root, old, manifest.inputs, relocated) if "inputs" in given else []
            keep = ("created", "inputs", "relocations")
            manifest = Manifest.model_validate({**old.dump(), **{k: v for k, v in manifest.dump().items()
                                                                 if k not in keep}, "relocations": relocations})
        elif root.exists() and any(not p.match(f".{MANIFEST}.*.tmp") for p in root.iterdir()):
            raise StoreError(f"{root} is not empty and holds no {MANIFEST}; pass a new or empty --out folder")
        elif relocated:
            raise StoreError(f"--relocated is for resuming a run whose images folder moved; {root} holds no run yet")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create run folder {root}: {exc.strerror}") from None
        store = cls(root)
        manifest.fingerprint = fingerprint
        manifest.created = manifest.created or _now()
        try:
            remove_temporaries(root, MANIFEST)  # a run killed while writing its manifest
            store.write_manifest(manifest)
            for path in (path for kind in KINDS for path in store.files(kind)):
                repair_torn_tail(path)
            store._set_aside_transient()
        except OSError as exc:
            raise unwritable(root, exc) from None
        return store

    @classmethod
    def open_shard(cls, root: Path, shard: str) -> RunStore:
        """A writer's own files in a run folder the driver opened; a torn tail its previous life (an actor
        killed mid-write, then restarted) left is cut first, so its next line starts on a line of its own."""
        store = cls(root, shard)
        if not (store.root / MANIFEST).exists():
            raise StoreError(f"{store.root} is not a run folder on this node; with --executor ray the --out folder "
                             "must be on a filesystem that every node mounts at the same path")
        for path in store.paths.values():
            repair_torn_tail(path)
        return store

    # -- reading ---------------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        """The run's manifest; StoreError when the folder holds none (not a run) or one that does not parse."""
        path = self.root / MANIFEST
        if not path.exists():
            raise StoreError(f"{self.root} is not a run folder (no {MANIFEST}); pass the --out folder of a synthesize run")
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except ValueError as exc:
            raise StoreError(f"{path} is not a valid manifest: {exc}") from None

    def trajectories(self) -> Iterator[Trajectory]:
        yield from self._records(Trajectory)

    def errors(self) -> Iterator[ErrorRecord]:
        yield from self._records(ErrorRecord)

    def image_tasks(self) -> Iterator[ImageTasks]:
        yield from self._records(ImageTasks)

    def _records(self, kind: type[Record]) -> Iterator[Record]:
        for path in self.files(kind):
            yield from read_jsonl(path, kind)

    def files(self, kind: type[Record]) -> list[Path]:
        """Every file of one record kind: the driver's and each shard's, in a fixed order."""
        return sorted(self.root.glob(f"{KINDS[kind]}*.jsonl"))

    def sizes(self) -> dict[Path, int]:
        """Where this writer's files end now: `records_since` reads what was appended after."""
        return {path: path.stat().st_size if path.exists() else 0 for path in self.paths.values()}

    def records_since(self, sizes: dict[Path, int]) -> Iterator[ImageTasks | Trajectory | ErrorRecord]:
        """The whole records appended to this writer's files after `sizes`, while it may still be writing:
        a line cut by the start offset or not yet ended (being written, or torn by a kill) is not one."""
        for kind, path in self.paths.items():
            if not path.exists():
                continue
            with path.open("rb") as handle:
                start = sizes.get(path, 0)
                handle.seek(max(start - 1, 0))
                data = handle.read()
            lines = data.split(b"\n")[:-1]  # the last piece has no newline: empty, or a line not yet whole
            if start > 0:
                lines = lines[1:]  # the end of the line before `start`, or of a line cut by it: not since
            yield from (kind.model_validate_json(line) for line in lines if line.strip())

    def done_ids(self) -> set[str]:
        """Ids of finished work: trajectories and errors (every transient error was set aside when the run
        was opened, so each error here is final for this run)."""
        return {t.id for t in self.trajectories()} | {e.id for e in self.errors()}

    # -- writing ---------------------------------------------------------------------------------
    def append(self, record: ImageTasks | Trajectory | ErrorRecord) -> None:
        self._append(self.paths[type(record)], record)

    def _set_aside_transient(self) -> None:
        """A resume tries transient errors (a worker died, a model out of reach) again: their records move from
        the errors files to `retried-errors.jsonl` before any work starts. Appended there first, so a kill in
        between leaves a record in both places (the next open moves it again), never in neither."""
        for path in self.files(ErrorRecord):
            keep, retry = [], []
            for line in path.read_bytes().splitlines(keepends=True):
                (retry if line.strip() and json.loads(line).get("transient") else keep).append(line)
            if not retry:
                continue
            with (self.root / RETRIED).open("ab") as handle:
                handle.write(b"".join(retry))
                handle.flush()
                os.fsync(handle.fileno())
            write_bytes_atomic(path, b"".join(keep))

    def write_manifest(self, manifest: Manifest) -> None:
        with self._lock:
            write_json_atomic(self.root / MANIFEST, {**manifest.dump(), "updated": _now()})

    def close(self) -> None:
        with self._lock:
            for handle in self._handles.values():
                try:
                    handle.close()
                except OSError:
                    pass  # only the line of an append that already failed (disk full) is unflushed: a torn tail
            self._handles.clear()

    def _append(self, path: Path, record: BaseModel) -> None:
        line = record.model_dump_json() + "\n"
        with self._lock:
            handle = self._handles.get(path)
            if handle is None:
                handle = self._handles[path] = path.open("a", encoding="utf-8")
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


IDENTITY = ("source", "questions_sha256", "coco_sha256")
"""What a run is made from besides its images folder: the source kind and the content of its task files."""


def _same_inputs(root: Path, old: Manifest, given: ManifestInputs, relocated: bool) -> list[dict]:
    """The run's relocations, with this one added: refuses inputs other than those the run was made from.
    Only the images folder may differ, and only when `relocated` and every image the run holds tasks for
    is found at the new place with the same content (sha256)."""
    made, inputs = old.inputs.model_dump(exclude_unset=True), given.model_dump(exclude_unset=True)
    relocations = [relocation.model_dump(exclude_unset=True) for relocation in old.relocations]
    differ = [key for key in IDENTITY if key in made and made[key] != inputs.get(key)]
    if differ:
        raise StoreError(f"{root} was made from {_describe(made)}, not {_describe(inputs)}; pass a new --out to "
                         "start a run from these inputs")
    images = old.images_folder
    if images is None or images == inputs.get("images"):
        return relocations
    if not relocated:
        raise StoreError(f"{root} was made from --images {images}, not {inputs['images']}; pass a new --out to "
                         "start a run from these images, or add --relocated if the same images moved there")
    from mmcof_gen.imaging import file_sha256  # PIL and friends only when a run is relocated

    for item in RunStore(root).image_tasks():
        path = Path(inputs["images"]) / item.image
        if not path.is_file() or file_sha256(path) != item.image_sha256:
            raise StoreError(f"--relocated: {path} is {'not the image' if path.is_file() else 'missing, but'} "
                             f"the run made tasks for ({item.image} in {images}); pass the folder the images moved to")
    return [*relocations, {"images": inputs["images"], "at": _now()}]


def _describe(inputs: dict) -> str:
    kind = inputs.get("source")
    files = [f"--{key} {inputs.get(key)} (sha256 {(inputs.get(f'{key}_sha256') or '?')[:12]})"
             for key in ("questions", "coco") if inputs.get(key)]
    return " ".join([f"--images {inputs.get('images')}", *files, f"(source {kind})"])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
