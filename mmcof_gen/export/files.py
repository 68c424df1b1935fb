"""What an export writes to disk: content-addressed PNGs and the data files, every one atomically.

Images are named by the hash of their pixels, so a frame shared by several tasks is written once and a
re-export writes nothing new; every file goes through a temporary name and a rename, so an interrupted
export leaves no half-written file that a re-run (or a trainer) would trust.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PIL import Image

from mmcof_gen.imaging import image_sha256, image_to_png_bytes
from mmcof_gen.store import AtomicFile, write_temporary

IMAGES_DIR = "images"
PNG_LEVEL = 1
"""zlib level of every PNG an export writes: about 5x faster than Pillow's default 6 for 3% more bytes on photos
(docs/speed.md has the measurements); lossless at any level."""


class ImageFiles:
    """PNG files under `<out>/images/`, named `<sha256 of the pixels, 16 hex>.png` (lossless: a crop
    read back is pixel-identical to the one the crop function made). Holds no state, so every worker
    process of an export uses its own copy."""

    def __init__(self, out_dir: Path, absolute_paths: bool = False):
        self.out_dir = Path(out_dir)
        self.absolute_paths = absolute_paths

    def add(self, image: Image.Image) -> tuple[str, str, bool]:
        """Write `image` unless a file with its pixels exists (then it is not encoded at all); returns the
        path a sample names, the file's name, and whether this call wrote it."""
        name = f"{IMAGES_DIR}/{image_sha256(image)[:16]}.png"
        path = self.out_dir / name
        written = not path.exists() and write_new(path, image_to_png_bytes(image, PNG_LEVEL))
        return (str(path.resolve()) if self.absolute_paths else name), name, written


def write_new(path: Path, data: bytes) -> bool:
    """Write `path` atomically unless it exists; True if this call made it. Processes that make the same
    file (the same pixels) at once are safe: the first link wins, the others drop their copy, so every new
    file is counted exactly once."""
    tmp = write_temporary(path, data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


class RecordWriter:
    """A JSON list (`.json`, what LLaMA-Factory and the Qwen fine-tune repo read) or JSON lines (`.jsonl`),
    streamed to a temporary file and renamed into place on `close`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lines = self.path.suffix == ".jsonl"
        self.file = AtomicFile(self.path)
        self.handle = self.file.tmp.open("w", encoding="utf-8")
        self.count = 0
        if not self.lines:
            self.handle.write("[")

    def write(self, record: dict) -> None:
        text = json.dumps(record, ensure_ascii=False)
        if self.lines:
            self.handle.write(text + "\n")
        else:
            self.handle.write(("\n" if self.count == 0 else ",\n") + text)
        self.count += 1

    def close(self) -> None:
        if not self.lines:
            self.handle.write("\n]\n")
        self.handle.close()
        self.file.commit()
