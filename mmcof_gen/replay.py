"""Re-execution of stored trajectories: rebuild each working frame and every crop with the crop function.

Filter uses it to prove that a chain still reproduces its evidence; export uses it to materialise the
images a sample shows. Both must see exactly the pixels synthesis saw, so frames are rebuilt with
`imaging.make_frames` (pixel-identical to synthesis' `make_frame`) and checked against the `frame_sha256`
each trajectory recorded.

`replayed` runs this across a process pool: trajectories are read WINDOW at a time and grouped by source
image (a run of several workers interleaves the images in flight), cut into batches, and each source image
is decoded once per batch for all its R; results come back in input order, so the output does not depend on
the number of processes. Filter needs a frame's hash and size, not its pixels, so a worker remembers those
of every frame it rebuilt and never rebuilds one twice, however far apart its trajectories lie in the run.
Memory holds a window of records and a few frames, whatever the size of the run.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import TypeVar

from PIL import Image

from mmcof_gen.imaging import ImageError, crop_zoom, image_sha256, make_frames, zoom_plan
from mmcof_gen.parallel import ordered_map
from mmcof_gen.schema import Manifest, Trajectory
from mmcof_gen.store import RunStore, StoreError

Payload = TypeVar("Payload")
Result = TypeVar("Result")
Item = tuple[int, Trajectory | None, Payload]  # (position in the input, trajectory or None, payload)

BATCH = 8  # trajectories per batch; a batch only ends where the source image changes ...
MAX_BATCH = 256  # ... unless one image has this many
WINDOW = 512  # trajectories read ahead and grouped by source image; results still come out in input order
PROVEN_FRAMES = 65536  # (image, R) -> (hash, size) a worker remembers; a few MB


class ReplayError(Exception):
    """A trajectory whose frame or crops cannot be rebuilt; the message is the reason a report shows."""


class FrameSource:
    """Working frames of a run, rebuilt from its image folder. `expect` names the trajectories to come, so
    that an image is decoded once for every R they need; the frames of the last image are kept."""

    def __init__(self, manifest: Manifest):
        if manifest.images_folder is None or manifest.max_pixels is None:
            raise ReplayError("the manifest names no input image folder (inputs.images) "
                              "or no images.max_pixels; pass a folder made by synthesize")
        self.images_root = Path(manifest.images_folder)
        self.max_pixels = manifest.max_pixels
        self._wanted: dict[str, set[int]] = {}
        self._image: str | None = None
        self._frames: dict[int, tuple[Image.Image, str]] = {}  # R -> (frame, its image_sha256)
        self._error: str | None = None
        self._proven: OrderedDict[tuple[str, int], tuple[str, tuple[int, int]]] = OrderedDict()

    def expect(self, trajectories: Iterable[Trajectory]) -> None:
        self._wanted = {}
        for trajectory in trajectories:
            self._wanted.setdefault(trajectory.task.image, set()).add(trajectory.view.resolution)

    def frame(self, trajectory: Trajectory) -> Image.Image:
        """The working frame of a trajectory, pixel-identical to the one it was made on."""
        image, resolution = trajectory.task.image, trajectory.view.resolution
        if image != self._image or (self._error is None and resolution not in self._frames):
            self._load(image, self._wanted.get(image, set()) | {resolution})
        path = self.images_root / image
        if self._error is not None:
            raise ReplayError(self._error)
        frame, sha = self._frames[resolution]
        _same_frame(sha, trajectory, path)
        return frame

    def frame_size(self, trajectory: Trajectory) -> tuple[int, int]:
        """The size of a trajectory's working frame, once its recorded hash is proven. A frame this process
        has rebuilt already is not rebuilt: its hash and size are remembered (not its pixels), so a run whose
        trajectories of one image are far apart (several workers, a Ray run) costs one rebuild per frame."""
        key = (trajectory.task.image, trajectory.view.resolution)
        if key not in self._proven:
            return self.frame(trajectory).size
        self._proven.move_to_end(key)
        sha, size = self._proven[key]
        _same_frame(sha, trajectory, self.images_root / trajectory.task.image)
        return size

    def _load(self, image: str, resolutions: set[int]) -> None:
        self._image, self._frames, self._error = image, {}, None
        path = self.images_root / image
        if not path.is_file():
            self._error = f"source image {path} is missing"
            return
        try:
            frames = make_frames(path, resolutions, self.max_pixels)
        except (ImageError, OSError) as exc:
            self._error = f"source image {path} cannot be read: {exc}"
            return
        self._frames = {r: (frame, image_sha256(frame)) for r, frame in frames.items()}
        for resolution, (frame, sha) in self._frames.items():
            self._proven[image, resolution] = sha, frame.size
            self._proven.move_to_end((image, resolution))
        while len(self._proven) > PROVEN_FRAMES:
            self._proven.popitem(last=False)


def replayable(store: RunStore) -> Manifest:
    """The manifest of a run whose frames can be rebuilt; StoreError naming the folder when it cannot locate
    its images (what export and filter's re-execution check before they write anything)."""
    manifest = store.manifest()
    try:
        FrameSource(manifest)
    except ReplayError as exc:
        raise StoreError(f"{store.root}: {exc}") from None
    return manifest


def _same_frame(sha: str, trajectory: Trajectory, path: Path) -> None:
    if sha != trajectory.view.frame_sha256:
        raise ReplayError(f"the frame rebuilt from {path} differs from the one synthesised "
                          "(the image or the resize code changed)")


def chain_crops(frame: Image.Image, trajectory: Trajectory) -> list[Image.Image]:
    """The crop of every zoom of the chain, in order (the images `images[1:]` of a sample)."""
    check_chain(frame.size, trajectory)
    return [crop_zoom(frame, step.box) for step in trajectory.chain]


def check_chain(frame_size: tuple[int, int], trajectory: Trajectory) -> None:
    """ReplayError unless the crop function accepts every zoom of the chain on a frame of `frame_size` (its
    checks, not its pixels: a crop that passes them is a pure function of the frame, which its hash proved)."""
    for number, step in enumerate(trajectory.chain, 1):
        try:
            zoom_plan(step.box, *frame_size)
        except ValueError as exc:  # imaging.InvalidBox
            raise ReplayError(f"zoom {number} box {list(step.box)} cannot be cropped: {exc}") from None


def replayed(items: Iterable[tuple[Trajectory | None, Payload]],
             work: Callable[[FrameSource, Trajectory], Result], manifest: Manifest,
             jobs: int, window: int = WINDOW) -> Iterator[tuple[Payload, Result | ReplayError | None]]:
    """`(payload, work(frames, trajectory))` for each item, in input order, over `jobs` processes.

    An item whose trajectory is None is not replayed (its result is None); a ReplayError raised by `work`
    is returned as the result. `work` must pickle (a module-level function, or a partial of one). Results
    wait here until those before them are back, up to `window` of them: pass 1 when results are large.
    Raises ReplayError at once if the manifest cannot locate the images.
    """
    FrameSource(manifest)  # the manifest's own error, before any process starts
    pending: deque[list[Item]] = deque()  # batches sent, results not yet back

    def batches() -> Iterator[list[Trajectory]]:
        for batch in _batches(_grouped(items, window)):
            pending.append(batch)
            yield [trajectory for _, trajectory, _ in batch if trajectory is not None]

    back: dict[int, tuple[Payload, Result | ReplayError | None]] = {}  # results not yet due, by input position
    due = 0
    for results in ordered_map(partial(_replay_batch, work), batches(), jobs, _start_worker, (manifest,)):
        found = iter(results)
        for position, trajectory, payload in pending.popleft():
            back[position] = payload, (None if trajectory is None else next(found))
        while due in back:
            yield back.pop(due)
            due += 1


def _grouped(items: Iterable[tuple[Trajectory | None, Payload]], size: int) -> Iterator[Item]:
    """`(position, trajectory, payload)`, `size` items at a time, the trajectories of each source image together
    (in the order the images first appear): a run of several workers interleaves the images in flight, and
    neighbours share a decode."""
    window: list[Item] = []
    for position, (trajectory, payload) in enumerate(items):
        window.append((position, trajectory, payload))
        if len(window) == size:
            yield from _by_image(window)
            window = []
    yield from _by_image(window)


def _by_image(window: list[Item]) -> list[Item]:
    first: dict[str, int] = {}  # image -> position of its first trajectory in the window

    def key(item: Item) -> int:
        position, trajectory, _ = item
        return position if trajectory is None else first.setdefault(trajectory.task.image, position)
    return sorted(window, key=key)


def _batches(items: Iterable[Item]) -> Iterator[list[Item]]:
    """Neighbouring items, cut where the source image changes once a batch holds BATCH (or at MAX_BATCH)."""
    batch: list = []
    image = None
    for item in items:
        trajectory = item[1]
        new_image = trajectory is not None and trajectory.task.image != image
        if len(batch) >= MAX_BATCH or (len(batch) >= BATCH and new_image):
            yield batch
            batch = []
        if trajectory is not None:
            image = trajectory.task.image
        batch.append(item)
    if batch:
        yield batch


_SOURCE: FrameSource | None = None  # the frame source of this worker process


def _start_worker(manifest: Manifest) -> None:
    global _SOURCE
    _SOURCE = FrameSource(manifest)


def _replay_batch(work: Callable[[FrameSource, Trajectory], Result],
                  trajectories: list[Trajectory]) -> list[Result | ReplayError]:
    """Results of one batch in its order, computed image by image (each image decoded once)."""
    _SOURCE.expect(trajectories)
    results: list = [None] * len(trajectories)
    for index in sorted(range(len(trajectories)), key=lambda i: trajectories[i].task.image):
        try:
            results[index] = work(_SOURCE, trajectories[index])
        except ReplayError as exc:
            results[index] = exc
    return results
