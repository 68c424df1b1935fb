"""PNG zlib level for export: encode time and size of real working frames and crops at each level.

Run: PYTHONPATH=. .venv/bin/python benchmarks/bench_png.py

A 2000x1500 photo-like JPEG is made in a temp dir; its working frames at R = 448, 1024, 1920 and a zoom crop
of each are encoded with `imaging.image_to_png_bytes` at zlib levels 0-9 (best of 3, time.perf_counter).
Printed per level: total milliseconds and megabytes, and both as ratios to Pillow's default level 6. Every
level is lossless (checked: the decoded pixels hash to the frame's), so the choice is time against bytes.
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_scale import photo_base  # noqa: E402
from mmcof_gen.imaging import crop_zoom, image_sha256, image_to_png_bytes, make_frame  # noqa: E402

RESOLUTIONS = (448, 1024, 1920)
LEVELS = range(10)
RUNS = 3


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "photo.jpg"
        Image.fromarray(np.clip(photo_base(np.random.default_rng(0)), 0, 255).astype(np.uint8)).save(path, quality=90)
        images = []
        for resolution in RESOLUTIONS:
            frame = make_frame(path, resolution, 250_000_000)
            w, h = frame.size
            images += [frame, crop_zoom(frame, (w * 4 // 10, h * 4 // 10, w * 5 // 10, h * 5 // 10))]
        pixels = sum(i.width * i.height for i in images)
        print(f"{len(images)} images (frames at R={', '.join(map(str, RESOLUTIONS))} and a crop of each), "
              f"{pixels / 1e6:.1f} MP in all; best of {RUNS}\n")
        rows = {}
        for level in LEVELS:
            best, size = float("inf"), 0
            for _ in range(RUNS):
                start = time.perf_counter()
                encoded = [image_to_png_bytes(image, level) for image in images]
                best = min(best, time.perf_counter() - start)
                size = sum(map(len, encoded))
            for image, data in zip(images, encoded):
                assert image_sha256(Image.open(io.BytesIO(data))) == image_sha256(image), "not lossless"
            rows[level] = (best, size)
        base_time, base_size = rows[6]
        print(f"{'level':>5} {'ms':>8} {'MB':>7} {'time / L6':>10} {'size / L6':>10}")
        for level, (seconds, size) in rows.items():
            print(f"{level:>5} {seconds * 1000:>8.0f} {size / 1e6:>7.2f} {seconds / base_time:>10.2f} "
                  f"{size / base_size:>10.2f}")


if __name__ == "__main__":
    main()
