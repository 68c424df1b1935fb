"""Working-frame cost: our make_frame (JPEG draft decoding) + one zoom vs a plain full decode + resize.

Run from the checkout: .venv/bin/python -m benchmarks.bench_frames
A 6000x4000 (24 MP) photo-like JPEG (gradients + noise, quality 90) is made in a temp dir; each op is timed
best-of-N with time.perf_counter. The ratio is ours (frame + zoom) / baseline (frame only): below 1 means the
draft decode pays for the zoom and more.

`--stages --size 2000x1500 --resolutions 448,1024` instead splits what filter's frame check costs (replay.py:
make_frames, then image_sha256) into its stages per R: the (draft) decode, the LANCZOS resize, the hash.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmcof_gen.imaging import crop_zoom, frame_size, image_sha256, load_image, make_frame

WIDTH, HEIGHT = 6000, 4000
RESOLUTIONS = (448, 1024, 1920)
RUNS = 7
MAX_PIXELS = 250_000_000


def photo_like_jpeg(path: Path, width: int = WIDTH, height: int = HEIGHT) -> Path:
    """Smooth gradients and colour blobs plus sensor-like noise, so the JPEG has realistic entropy (~ a photo)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    blobs = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
                       .resize((width, height), Image.BICUBIC), dtype=np.float32)
    gradient = np.stack([x / width * 120, y / height * 120, (x + y) / (width + height) * 120], axis=-1)
    pixels = 0.5 * blobs + gradient + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def best_ms(fn) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def baseline(path: Path, resolution: int) -> Image.Image:
    image = Image.open(path).convert("RGB")
    return image.resize(frame_size(*image.size, resolution), Image.LANCZOS)


def ours(path: Path, resolution: int) -> Image.Image:
    frame = make_frame(path, resolution, MAX_PIXELS)
    w, h = frame.size
    return crop_zoom(frame, [w * 2 // 5, h * 2 // 5, w * 3 // 5, h * 3 // 5])  # a central box, 1/5 of each side


def stages(width: int, height: int, resolutions: list[int]) -> None:
    """Per R: decode (at the JPEG draft scale make_frame uses), LANCZOS resize to the frame, image_sha256."""
    with tempfile.TemporaryDirectory() as tmp:
        path = photo_like_jpeg(Path(tmp) / "photo.jpg", width, height)
        print(f"{width}x{height} JPEG, {path.stat().st_size / 1e6:.2f} MB; best of {RUNS} runs\n")
        print(f"{'R':>5}  {'frame':>10}  {'decoded':>10}  {'decode ms':>9}  {'resize ms':>9}  {'hash ms':>7}")
        for resolution in resolutions:
            size = frame_size(width, height, resolution)
            decoded = load_image(path, MAX_PIXELS, target_size=size)
            frame = decoded.resize(size, Image.LANCZOS)
            assert image_sha256(frame) == image_sha256(make_frame(path, resolution, MAX_PIXELS))  # the same stages
            decode = best_ms(lambda: load_image(path, MAX_PIXELS, target_size=size))
            resize = best_ms(lambda: decoded.resize(size, Image.LANCZOS))
            digest = best_ms(lambda: image_sha256(frame))
            print(f"{resolution:>5}  {'x'.join(map(str, size)):>10}  {'x'.join(map(str, decoded.size)):>10}  "
                  f"{decode:>9.1f}  {resize:>9.1f}  {digest:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", action="store_true", help="time decode, resize and hash of a frame separately")
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="the test JPEG's WxH (--stages)")
    parser.add_argument("--resolutions", default="448,1024", help="the R to split (--stages)")
    args = parser.parse_args()
    if args.stages:
        width, height = map(int, args.size.split("x"))
        stages(width, height, [int(r) for r in args.resolutions.split(",")])
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = photo_like_jpeg(Path(tmp) / "photo.jpg")
        print(f"{WIDTH}x{HEIGHT} JPEG, {path.stat().st_size / 1e6:.1f} MB; best of {RUNS} runs\n")
        print(f"{'R':>5}  {'frame':>10}  {'baseline ms':>11}  {'make_frame ms':>13}  {'frame+zoom ms':>13}  "
              f"{'ours/baseline':>13}")
        for resolution in RESOLUTIONS:
            w, h = frame_size(WIDTH, HEIGHT, resolution)
            base = best_ms(lambda: baseline(path, resolution))
            frame_only = best_ms(lambda: make_frame(path, resolution, MAX_PIXELS))
            total = best_ms(lambda: ours(path, resolution))
            print(f"{resolution:>5}  {f'{w}x{h}':>10}  {base:>11.1f}  {frame_only:>13.1f}  {total:>13.1f}  "
                  f"{total / base:>13.2f}")


if __name__ == "__main__":
    main()
