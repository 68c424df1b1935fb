"""Images kept out of a run: an exclusion list (benchmark images) and near-duplicates (perceptual hash).

An exclusion list is a text file, one entry per line (blank lines and `# comments` ignored): an image's
sha256, its path relative to the images folder, its file name or stem, or `phash:<16 hex digits>` (a
64-bit DCT perceptual hash, as `imagehash.phash` prints it). It may also be a folder of the excluded
images themselves (e.g. the V*-bench folder): each is excluded by its sha256 and, when near-duplicate
detection is on, by its perceptual hash. `synthesize` screens its source with it (an excluded image is
recorded as skipped, never searched) and `filter` drops finished trajectories by the same list.

    exclusions = load_exclusions(Path("vstar_bench"), "--exclude", perceptual=True, max_pixels=10**8)
    units = screen(source.units, exclusions, max_distance=4, max_pixels=10**8)

Near-duplicates (a re-encoded, resized or lightly edited copy) are caught by the Hamming distance of
perceptual hashes, against the excluded images and against every earlier image of the run (the first
one in source order is kept). Perceptual hashing needs `imagehash` (the `data` extra).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmcof_gen.errors import ConfigError
from mmcof_gen.extras import require
from mmcof_gen.imaging import ImageError, discover_images, file_sha256, load_image
from mmcof_gen.tasks.sources import ImageUnit

PHASH = "phash:"
_HEX64 = re.compile(r"[0-9a-fA-F]{16}")


@dataclass
class Exclusions:
    """Keys (sha256s, relative paths, file names, stems) and perceptual hashes (-> where each came from)."""

    keys: set[str] = field(default_factory=set)
    phashes: dict[int, str] = field(default_factory=dict)

    def match(self, image: str, sha256: str | None) -> str | None:
        """The key under which `image` (relative path) is excluded, or None."""
        path = Path(image)
        return next((key for key in (sha256, image, path.name, path.stem) if key and key in self.keys), None)


def load_exclusions(path: Path, setting: str, perceptual: bool = False, max_pixels: int = 250_000_000) -> Exclusions:
    """Read an exclusion list file, or hash a folder of excluded images; errors name `setting` and the fix.

    `perceptual`: also hash a folder's images perceptually (only then are near-duplicates of them found).
    """
    path = Path(path)
    if path.is_dir():
        exclusions = Exclusions()
        for image in discover_images(path):
            exclusions.keys.add(file_sha256(image))
            if perceptual:
                try:
                    exclusions.phashes.setdefault(perceptual_hash(image, max_pixels), image.relative_to(path).as_posix())
                except ImageError as exc:
                    raise ConfigError(f"{setting} {path}: {exc}; remove the file from the folder") from None
        return exclusions
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{setting} {path} cannot be read ({exc.strerror or exc}); fix the path or leave it unset") from None
    exclusions = Exclusions()
    for number, line in enumerate(lines, 1):
        entry = line.split("#", 1)[0].strip()
        if not entry.startswith(PHASH):
            if entry:
                exclusions.keys.add(entry)
            continue
        digits = entry.removeprefix(PHASH).strip()
        if not _HEX64.fullmatch(digits):
            raise ConfigError(f"{setting} {path}:{number}: {entry!r} is not phash:<16 hex digits>; fix or remove the line")
        exclusions.phashes.setdefault(int(digits, 16), f"{path.name}:{number}")
    return exclusions


def perceptual_hash(path: Path, max_pixels: int) -> int:
    """64-bit DCT perceptual hash of the upright image (decoded small: it only needs 32x32 pixels)."""
    require("data", "near-duplicate detection (tasks.near_duplicate_distance, phash: exclusions)", ("imagehash",))
    import imagehash

    return int(str(imagehash.phash(load_image(path, max_pixels, target_size=(64, 64)))), 16)


class HashIndex:
    """Perceptual hashes seen so far, searched by Hamming distance (vectorised over all of them)."""

    def __init__(self, items: Iterable[tuple[int, str]] = ()):
        self._hashes = np.zeros(1024, dtype=np.uint64)
        self._names: list[str] = []
        for value, name in items:
            self.add(value, name)

    def add(self, value: int, name: str) -> None:
        if len(self._names) == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[len(self._names)] = value
        self._names.append(name)

    def nearest(self, value: int) -> tuple[str, int] | None:
        """(name, distance) of the closest hash, the earliest on ties; None when the index is empty."""
        if not self._names:
            return None
        distances = np.bitwise_count(self._hashes[: len(self._names)] ^ np.uint64(value))
        best = int(np.argmin(distances))
        return self._names[best], int(distances[best])


def screen(units: Iterable[ImageUnit], exclusions: Exclusions | None, max_distance: int | None,
           max_pixels: int) -> Iterator[ImageUnit]:
    """The units with `skipped` set (and why) for excluded images and near-duplicates; streamed.

    An image that cannot be read is passed on unscreened: the worker reports it as an image error.
    """
    exclusions = exclusions or Exclusions()
    perceptual = max_distance is not None or bool(exclusions.phashes)
    distance = max_distance or 0
    excluded = HashIndex(exclusions.phashes.items())
    earlier = HashIndex()
    for unit in units:
        try:
            key = exclusions.match(unit.rel, file_sha256(unit.path) if exclusions.keys else None)
            if key is not None:
                unit.skipped = f"on the exclusion list (as {key!r})"
            elif perceptual:
                value = perceptual_hash(unit.path, max_pixels)
                unit.skipped = _near(excluded, value, distance, "excluded image") if exclusions.phashes else None
                if unit.skipped is None and max_distance is not None:
                    unit.skipped = _near(earlier, value, distance, "earlier image")
                    if unit.skipped is None:
                        earlier.add(value, unit.rel)
        except (ImageError, OSError):
            pass
        yield unit


def _near(index: HashIndex, value: int, max_distance: int, what: str) -> str | None:
    found = index.nearest(value)
    if found is None or found[1] > max_distance:
        return None
    return f"near-duplicate of {what} {found[0]} (perceptual-hash distance {found[1]} <= {max_distance})"
