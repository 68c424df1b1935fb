"""Re-execution of a stored trajectory: rebuild its working frame and every crop with the crop function.

Filter uses it to prove that a chain still reproduces its evidence; export uses it to materialise the
images a sample shows. Both must see exactly the pixels synthesis saw, so the frame is rebuilt with
`imaging.make_frame` and checked against the `frame_sha256` the trajectory recorded.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from PIL import Image

from mmcof_gen.imaging import ImageError, crop_zoom, image_sha256, make_frame
from mmcof_gen.schema import Trajectory
from mmcof_gen.store import images_folder


class ReplayError(Exception):
    """A trajectory whose frame or crops cannot be rebuilt; the message is the reason a report shows."""


class FrameSource:
    """Working frames of a run, rebuilt from its image folder; the last few are cached, since the
    trajectories of one image at one R are stored next to each other."""

    def __init__(self, manifest: dict, cache_size: int = 8):
        try:
            self.images_root = Path(images_folder(manifest))
            self.max_pixels = int(manifest["config"]["images"]["max_pixels"])
        except (KeyError, TypeError):
            raise ReplayError("the manifest names no input image folder (inputs.images) "
                              "or no images.max_pixels; pass a folder made by synthesize") from None
        self._cache: OrderedDict[tuple[str, int], Image.Image] = OrderedDict()
        self._cache_size = cache_size

    def frame(self, trajectory: Trajectory) -> Image.Image:
        """The working frame of a trajectory, pixel-identical to the one it was made on."""
        key = (trajectory.task.image, trajectory.view.resolution)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        path = self.images_root / trajectory.task.image
        if not path.is_file():
            raise ReplayError(f"source image {path} is missing")
        try:
            frame = make_frame(path, trajectory.view.resolution, self.max_pixels)
        except (ImageError, OSError) as exc:
            raise ReplayError(f"source image {path} cannot be read: {exc}") from None
        if image_sha256(frame) != trajectory.view.frame_sha256:
            raise ReplayError(f"the frame rebuilt from {path} differs from the one synthesised "
                              "(the image or the resize code changed)")
        self._cache[key] = frame
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return frame


def chain_crops(frame: Image.Image, trajectory: Trajectory) -> list[Image.Image]:
    """The crop of every zoom of the chain, in order (the images `images[1:]` of a sample)."""
    crops = []
    for number, step in enumerate(trajectory.chain, 1):
        try:
            crops.append(crop_zoom(frame, step.box))
        except ValueError as exc:  # imaging.InvalidBox
            raise ReplayError(f"zoom {number} box {list(step.box)} cannot be cropped: {exc}") from None
    return crops
