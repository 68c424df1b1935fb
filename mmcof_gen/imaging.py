"""Images in, working frames and zooms out: loading, Qwen's smart_resize, the crop function, box maths.

Geometry and resizing are pure functions of their arguments, so a chain made at synthesis re-executes
bit-identically at export and evaluation. Boxes are `[x1, y1, x2, y2]` integer pixels (see docs/format.md).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

Box = tuple[int, int, int, int]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")  # matched in lower case; V* tries them in order

# The crop function's constants (docs/format.md); changing any of them breaks comparability with released CoF data.
_FACTOR = 28
MIN_PIXELS = 112 * 112
MAX_ZOOM_PIXELS = 3840 * 3840
_ENLARGE = 1.5
_SCALE_UP = 2
_MAX_RATIO = 200

# We enforce our own, configurable limit (`images.max_pixels`) from the header; Pillow's fixed one would refuse
# genuine 200-megapixel scans before our check could run.
Image.MAX_IMAGE_PIXELS = None

# EXIF orientation -> the transpose that makes the image upright (the table ImageOps.exif_transpose uses).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIDEWAYS = {5, 6, 7, 8}
_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}


class ImageError(ValueError):
    """An image that cannot be used (unreadable, corrupt, too large, not an image); the message names the file."""


class InvalidBox(ValueError):
    """A box that is not `[x1, y1, x2, y2]` inside the image; the message says what is wrong (a model reads it)."""


# ---------------------------------------------------------------- files


def discover_images(root: Path) -> Iterator[Path]:
    """Image files under `root`, streamed in sorted order so two runs over the same folder agree.

    Hidden entries are skipped; symlinks are followed only when they resolve inside `root`, so a link
    cannot pull in files the user did not point us at; a link back to an enclosing directory is not followed.
    """
    root = Path(root)
    inside = root.resolve()
    enclosing = {os.fspath(root): ()}  # directory still to walk -> real paths of the directories that contain it
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        chain = (*enclosing.pop(dirpath), os.path.realpath(dirpath))
        kept = []
        for name in sorted(dirnames):
            path = Path(dirpath, name)
            if not name.startswith(".") and _linked_inside(path, inside) and os.path.realpath(path) not in chain:
                kept.append(name)
                enclosing[os.path.join(dirpath, name)] = chain
        dirnames[:] = kept
        for name in sorted(filenames):
            path = Path(dirpath, name)
            if (not name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES
                    and _linked_inside(path, inside) and path.is_file()):
                yield path


def _linked_inside(path: Path, inside: Path) -> bool:
    return not path.is_symlink() or Path(os.path.realpath(path)).is_relative_to(inside)


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 1 MiB chunks so huge scans do not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- loading


@contextmanager
def _opened(path: Path, max_pixels: int) -> Iterator[tuple[Image.Image, int]]:
    """The lazily opened image (header only) and its EXIF orientation; any failure inside becomes an ImageError."""
    path = Path(path)
    try:
        empty = path.stat().st_size == 0
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if empty:
        raise ImageError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image {path} is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
                    "(images.max_pixels guards against decompression bombs; raise it if the image is genuine)")
            yield img, _orientation(img)
    except ImageError:
        raise
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"cannot read image {path}: not an image, or a format Pillow cannot decode") from exc
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: corrupt or truncated ({exc or type(exc).__name__})") from exc


def _orientation(img: Image.Image) -> int:
    if img.format == "PNG" and "exif" not in img.info:
        return 1  # PngImageFile.getexif() would decode the whole image to look for a late eXIf chunk
    return img.getexif().get(ExifTags.Base.Orientation, 1)


def image_size(path: Path, max_pixels: int) -> tuple[int, int]:
    """(W, H) as the image is shown (after EXIF orientation), from the header alone; ImageError if unusable."""
    with _opened(path, max_pixels) as (img, orientation):
        width, height = img.size
    return (height, width) if orientation in _SIDEWAYS else (width, height)


def load_image(path: Path, max_pixels: int, target_size: tuple[int, int] | None = None) -> Image.Image:
    """The fully decoded, upright RGB image; ImageError (naming the file and the reason) if it cannot be used.

    `target_size` (W, H, upright) is the size the caller will resize to: JPEGs are then decoded with DCT
    scaling to the smallest of 1/2, 1/4, 1/8 that stays >= target, which is several times faster on big photos.
    Transparency is composited on white (what a viewer shows), 16-bit data scaled to 8 bits, CMYK converted.
    """
    with _opened(path, max_pixels) as (img, orientation):
        _draft(img, orientation, target_size)
        img.load()  # decode now, so truncation is reported here and not at first use
        rgb = _to_rgb(img)
    return rgb.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else rgb


def _draft(img: Image.Image, orientation: int, target_size: tuple[int, int] | None) -> None:
    """Ask a JPEG decoder for the smallest DCT scale that stays >= `target_size` (a no-op for other formats)."""
    if target_size is not None:
        width, height = target_size
        img.draft("RGB", (height, width) if orientation in _SIDEWAYS else (width, height))


def _decoded_as(path: Path, max_pixels: int, target_size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """(mode, size) that `load_image(path, max_pixels, target_size)` decodes to, from the header alone."""
    with _opened(path, max_pixels) as (img, orientation):
        _draft(img, orientation, target_size)
        return img.mode, img.size


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(img), 0, 65535).astype(np.uint32)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8)).convert("RGB")  # round(v / 257): 65535 -> 255
    if img.mode == "F":
        return img.convert("L").convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


# ---------------------------------------------------------------- frames


def smart_resize(height: int, width: int, factor: int = _FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_ZOOM_PIXELS) -> tuple[int, int]:
    """(h_bar, w_bar): qwen-vl-utils' smart_resize, line for line, so our sizes are the ones Qwen2.5-VL sees.

    Both sides multiples of `factor`, area within [min_pixels, max_pixels], aspect ratio kept.
    Example: smart_resize(810, 1080, max_pixels=448*448) == (364, 504).
    """
    if max(height, width) / min(height, width) > _MAX_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {_MAX_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def frame_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(W, H) of the working frame of a width x height image at pixel budget resolution**2."""
    h, w = smart_resize(height, width, _FACTOR, MIN_PIXELS, resolution * resolution)
    return w, h


def make_frame(path: Path, resolution: int, max_pixels: int, upright: tuple[int, int] | None = None) -> Image.Image:
    """The working frame at `resolution`, decoded straight at (about) frame size; same file + R -> same pixels.
    `upright`: the image's size (`image_size`) when the caller has read it already."""
    size = frame_size(*(upright or image_size(path, max_pixels)), resolution)
    return _resized(load_image(path, max_pixels, target_size=size), size)


def make_frames(path: Path, resolutions, max_pixels: int) -> dict[int, Image.Image]:
    """The working frames of one image at several R, each pixel-identical to `make_frame`: one decode serves
    every R whose JPEG draft scale is the same (so one decode in all for PNG and other formats without one)."""
    upright = image_size(path, max_pixels)
    decoded: dict[tuple, Image.Image] = {}
    frames = {}
    for resolution in sorted(set(resolutions)):
        size = frame_size(*upright, resolution)
        key = _decoded_as(path, max_pixels, size)
        if key not in decoded:
            decoded[key] = load_image(path, max_pixels, target_size=size)
        frames[resolution] = _resized(decoded[key], size)
    return frames


def frame_from_image(image: Image.Image, resolution: int) -> Image.Image:
    """The working frame of an already loaded RGB image (no draft decoding, so pixels can differ from make_frame)."""
    return _resized(image, frame_size(*image.size, resolution))


def _resized(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    return image if image.size == size else image.resize(size, Image.LANCZOS)


# ---------------------------------------------------------------- boxes


def validate_box(box, width: int, height: int) -> Box:
    """`box` as integer pixels inside a width x height image, or InvalidBox saying what is wrong.

    Models emit floats ("[10.4, 5, 80, 20.6]"): they are rounded to the nearest pixel before the checks.
    """
    x1, y1, x2, y2 = (int(round(v)) for v in _numbers(box))
    if x2 <= x1:
        raise InvalidBox(f"box {_shown(box)} has x2 <= x1")
    if y2 <= y1:
        raise InvalidBox(f"box {_shown(box)} has y2 <= y1")
    if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
        raise InvalidBox(f"box {_shown(box)} is outside the {width}x{height} image "
                         f"(x must be within 0..{width}, y within 0..{height})")
    return x1, y1, x2, y2


def checked_box(box, width: int, height: int) -> Box:
    """THE guard every box a model emits passes before any crop: `box` as integer pixels inside the frame whose
    zoom can be shown, or InvalidBox saying what is wrong, so the caller makes it an observation the model can
    correct (a degenerate, thin, swapped, out-of-frame or non-numeric box never reaches the crop function)."""
    box = validate_box(box, width, height)
    zoom_plan(box, width, height)
    return box


def _numbers(box) -> tuple[float, float, float, float]:
    """The four coordinates of `box` as Python ints/floats (numpy scalars included), or InvalidBox."""
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise InvalidBox(f"a box must be a list of 4 numbers [x1, y1, x2, y2], got {_shown(box)}")
    for v in box:
        if isinstance(v, bool) or not isinstance(v, Real):
            raise InvalidBox(f"box {_shown(box)} has {v!r}, which is not a number")
        if not math.isfinite(v):
            raise InvalidBox(f"box {_shown(box)} has {v}, which is not a finite number")
    return tuple(int(v) if isinstance(v, Integral) else float(v) for v in box)


def _shown(box) -> str:
    return "[" + ", ".join(map(repr, box)) + "]" if isinstance(box, (list, tuple)) else repr(box)


def zoom_region(box: Box, width: int, height: int, enlarge: float = _ENLARGE) -> Box:
    """The part of the frame a zoom on `box` crops: the box enlarged `enlarge` times about its centre, clipped."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * enlarge, (y2 - y1) * enlarge
    return (int(max(0, cx - w / 2)), int(max(0, cy - h / 2)), int(min(width, cx + w / 2)), int(min(height, cy + h / 2)))


def crop_zoom(frame: Image.Image, box) -> Image.Image:
    """THE zoom tool (docs/format.md), bit-identical at synthesis, export and evaluation.

    A fractional box is enlarged as given and only the region is truncated to pixels, as the CoF release's
    eval does (rounding first moves an edge by a pixel); an integer box crops exactly as before.
    InvalidBox for a bad box, or for a region too thin for Qwen (aspect ratio over 200).
    """
    region, _ = zoom_plan(box, *frame.size)
    return zoom_image(frame, region)


def zoom_plan(box, width: int, height: int) -> tuple[Box, tuple[int, int]]:
    """(region of the frame, (W, H) of the crop) of a zoom on `box` in a width x height frame: every check of
    `crop_zoom` without its pixels, so the filter proves a chain re-executes without resizing anything.

    InvalidBox for a bad box, or for a region too thin for Qwen (aspect ratio over 200).
    """
    validate_box(box, width, height)
    region = zoom_region(_numbers(box), width, height)
    try:
        return region, zoom_size(region)
    except ValueError as exc:
        raise InvalidBox(f"box {_shown(box)} zooms to a {region[2] - region[0]}x{region[3] - region[1]} region, "
                         f"too thin to show ({exc})") from exc


def zoom_size(region: Box) -> tuple[int, int]:
    """(W, H) of the zoom of `region`: upscaled 2x within Qwen's pixel bounds.

    ValueError for a region too thin to show, or empty (a fractional box narrower than a pixel).
    """
    if region[2] <= region[0] or region[3] <= region[1]:
        raise ValueError("the region is empty")
    nh, nw = smart_resize((region[3] - region[1]) * _SCALE_UP, (region[2] - region[0]) * _SCALE_UP, factor=_FACTOR,
                          min_pixels=MIN_PIXELS, max_pixels=MAX_ZOOM_PIXELS)
    return nw, nh


def zoom_image(frame: Image.Image, region: Box) -> Image.Image:
    """`region` of the frame upscaled 2x (within Qwen's pixel bounds): the second half of the zoom tool.

    ValueError for a region too thin to show, or empty.
    """
    return frame.crop(region).resize(zoom_size(region), Image.LANCZOS).convert("RGB")


def crop_to_frame(crop_box, crop_size: tuple[int, int], region: Box) -> Box:
    """A box in pixels of a zoomed crop (size `crop_size`, made from `region` of the frame) in frame pixels.

    Rounds outward (floor x1/y1, ceil x2/y2) so a detection on a crop still covers its object, then clips
    to the region. Exact arithmetic: a detector box on a crop maps to the same frame box on every machine.
    """
    x1, y1, x2, y2 = _numbers(crop_box)
    cw, ch = crop_size
    rx1, ry1, rx2, ry2 = region
    sx, sy = Fraction(rx2 - rx1, cw), Fraction(ry2 - ry1, ch)
    mapped = (rx1 + math.floor(Fraction(x1) * sx), ry1 + math.floor(Fraction(y1) * sy),
              rx1 + math.ceil(Fraction(x2) * sx), ry1 + math.ceil(Fraction(y2) * sy))
    return _clipped(mapped, region)


def box_area(box) -> int:
    """Pixels covered by `box` (0 for an empty or inverted box)."""
    x1, y1, x2, y2 = box
    return max(0, x2 - x1) * max(0, y2 - y1)


def overlap_area(a, b) -> int:
    """Pixels two boxes share."""
    return box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))


def iou(a, b) -> float:
    """Intersection over union of two boxes; 0.0 when they do not overlap or both are empty."""
    inter = overlap_area(a, b)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box, width: int, height: int) -> Box:
    """`box` (rounded outward to whole pixels) clipped to a width x height image; InvalidBox if nothing is left."""
    x1, y1, x2, y2 = _numbers(box)
    return _clipped((_floor(x1), _floor(y1), _ceil(x2), _ceil(y2)), (0, 0, width, height))


def _clipped(box: Box, bounds: Box) -> Box:
    bx1, by1, bx2, by2 = bounds
    x1, y1, x2, y2 = max(bx1, box[0]), max(by1, box[1]), min(bx2, box[2]), min(by2, box[3])
    if x2 <= x1 or y2 <= y1:
        raise InvalidBox(f"box {_shown(list(box))} has no area inside {_shown(list(bounds))}")
    return x1, y1, x2, y2


def scale_box(box, sx: float, sy: float) -> Box:
    """`box` scaled by (sx, sy), e.g. original-image pixels -> frame pixels, rounded outward to whole pixels."""
    x1, y1, x2, y2 = _numbers(box)
    return _floor(x1 * sx), _floor(y1 * sy), _ceil(x2 * sx), _ceil(y2 * sy)


# Float noise (100 * 1.1 = 110.00000000000001) must not push an outward-rounded edge one pixel further.
_EPS = 1e-9


def _floor(v: float) -> int:
    return math.floor(v + _EPS)


def _ceil(v: float) -> int:
    return math.ceil(v - _EPS)


# ---------------------------------------------------------------- hashing


def image_to_png_bytes(image: Image.Image, compress_level: int = 6) -> bytes:
    """PNG of the pixels alone (metadata such as ICC and EXIF dropped): same pixels -> same bytes with one Pillow.

    `compress_level` 1 encodes photos about 6x faster than the default 6, for about 20% more bytes: for images
    sent to a model rather than stored.
    """
    bare = image.copy()
    bare.info = {}
    buffer = io.BytesIO()
    bare.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def image_sha256(image: Image.Image) -> str:
    """sha256 of the size and raw RGB bytes: compares pixels, independent of any encoder or library version."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}\n".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()
