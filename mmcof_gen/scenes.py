"""Deterministic high-resolution demo scenes with small text, for the offline RapidOCR pipeline.

Each scene is a photo-like street view (sky, building blocks, textured ground, noise) with the
bundled real photos (`mmcof_gen/resources/photos/`) pasted as posters and billboards, and 2-4 small signs: a
light plate with dark text, each alone in its cell of the 3x3 position grid and well away (6% of the
image side) from the grid lines, so "the small text in the <position> part of the image" names one
sign. Text sizes come in three tiers, set from the scene's size so that they hold at Qwen
`smart_resize` budgets R (the image resized to about R*R pixels):

- ``large``: about 14 px of text on the R=448 frame: read directly at every R;
- ``medium``: about 7 px at R=448: found but too small to read there (a zoom chain at small R), read
  directly at large R;
- ``small``: about 8 px at R=1920: a zoom chain at large R, unreadable at small R.

`scenes.json` in the output folder lists each scene's signs (text, plate box in image pixels, grid
cell, tier): ground truth for tests. A dev utility, run as::

    python -m mmcof_gen.scenes --out DIR [--count 6] [--seed 0] [--family street]

`--family` picks a scene family (`FAMILIES`): `demo` (the default, what `make demo` and the tests were
tuned on) or `street`, which the OCR rules were never tuned on: other fonts (DejaVu and STIX, from
matplotlib's data), letter spacing, coloured and dark plates, two-word sign texts and a bundled photo
stretched over the whole background, drawn from random streams of their own.

Same arguments, same bytes: files already holding the same content are left untouched.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmcof_gen import resources
from mmcof_gen.answers import normalize_text
from mmcof_gen.imaging import frame_size

PHOTOS_DIR = resources.PHOTOS
JPEG_QUALITY = 92
GRID_MARGIN = 0.06  # sign plates keep this fraction of the image side away from every cell edge
SIZES = ((3600, 2400), (3200, 2400), (4000, 2250), (3840, 2560), (3000, 2250), (3600, 2700))

# Text (ink) height on the whole frame resized to about R*R pixels, per tier: (R, target px).
TIERS = {
    "large": (448, 14.0),
    "medium": (448, 7.0),
    "small": (1920, 8.0),
}

# Words for sign texts; codes use letters and digits that OCR does not confuse (no O/0, I/1, Q).
WORDS = (
    "GATE", "EXIT", "CAFE", "PLATFORM", "HOTEL", "KIOSK", "BAKERY", "PHARMACY", "MUSEUM", "LIBRARY",
    "PARKING", "DOCK", "TRACK", "ZONE", "LEVEL", "ROOM", "BAY", "AISLE", "TERMINAL", "MARKET",
    "BANK", "POST", "GARDEN", "HARBOR", "STATION", "TICKETS", "BUS", "TRAM", "FERRY", "NORTH",
    "SOUTH", "EAST", "WEST", "BRIDGE", "TOWER", "CINEMA", "BOOKS", "SHOP", "FLOWERS", "PIZZA",
)
_CODE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"
_CODE_DIGITS = "23456789"


def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _ink_height(size: int, font: Callable[[int], ImageFont.FreeTypeFont] = _font) -> int:
    left, top, right, bottom = font(size).getbbox("EXITGATE")
    return bottom - top


def _font_size_for(ink: float, font: Callable[[int], ImageFont.FreeTypeFont] = _font) -> int:
    size = max(8, round(ink / 0.72))
    while _ink_height(size, font) < ink:
        size += 1
    while size > 8 and _ink_height(size - 1, font) >= ink:
        size -= 1
    return size


def _texts(rng: random.Random, count: int, used: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        word = rng.choice(WORDS)
        style = rng.random()
        if style < 0.25 and len(word) >= 5:  # short bare words (EXIT) can fool OCR's 180-degree classifier
            text = word
        elif 0.25 <= style < 0.6:
            text = f"{word} {rng.randint(2, 9)}{rng.choice(_CODE_DIGITS) if rng.random() < 0.4 else ''}"
        else:
            text = f"{word} {rng.choice(_CODE_LETTERS)}{rng.choice(_CODE_DIGITS)}"
        key = normalize_text(text)
        if key not in used:
            used.add(key)
            out.append(text)
    return out


# --- background -------------------------------------------------------------------------------


def _smooth_noise(nrng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """Value noise in [0, 1]: random values on a coarse grid, bicubic-upsampled."""
    small = (nrng.random((max(2, height // cell), max(2, width // cell))) * 255).astype(np.uint8)
    big = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    return np.asarray(big, dtype=np.float32) / 255.0


def _background(nrng: np.random.Generator, rng: random.Random, width: int, height: int, horizon: int) -> Image.Image:
    img = np.zeros((height, width, 3), np.float32)
    # sky: vertical gradient plus soft clouds
    top = np.array([rng.uniform(60, 110), rng.uniform(120, 160), rng.uniform(190, 230)], np.float32)
    low = np.array([rng.uniform(190, 220), rng.uniform(205, 225), rng.uniform(225, 240)], np.float32)
    t = np.linspace(0, 1, horizon, dtype=np.float32)[:, None, None]
    img[:horizon] = top * (1 - t) + low * t
    clouds = _smooth_noise(nrng, width, horizon, 180) * 0.6 + _smooth_noise(nrng, width, horizon, 60) * 0.4
    clouds = np.clip((clouds - 0.55) * 2.5, 0, 1)[..., None]
    img[:horizon] = img[:horizon] * (1 - 0.7 * clouds) + 245 * 0.7 * clouds
    # ground: brownish/grey with coarse and fine texture, darker towards the viewer
    base = np.array([rng.uniform(95, 125), rng.uniform(90, 110), rng.uniform(75, 95)], np.float32)
    gh = height - horizon
    tex = _smooth_noise(nrng, width, gh, 90) * 0.5 + _smooth_noise(nrng, width, gh, 12) * 0.3
    tex += nrng.random((gh, width), dtype=np.float32) * 0.2
    shade = np.linspace(1.1, 0.8, gh, dtype=np.float32)[:, None]
    img[horizon:] = base * ((0.75 + 0.5 * tex) * shade)[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _buildings(draw: ImageDraw.ImageDraw, rng: random.Random, width: int, height: int, horizon: int) -> list[tuple]:
    """Building blocks along the horizon; returns their facades (x0, y0, x1, y1)."""
    facades = []
    x = -rng.randint(0, 200)
    while x < width:
        bw = rng.randint(width // 12, width // 5)
        top = rng.randint(int(height * 0.06), int(horizon * 0.7))
        shade = rng.randint(95, 190)
        tint = (rng.randint(-20, 20), rng.randint(-15, 15), rng.randint(-20, 10))
        colour = tuple(max(0, min(255, shade + d)) for d in tint)
        draw.rectangle((x, top, x + bw, horizon + rng.randint(5, 40)), fill=colour)
        edge = tuple(max(0, c - 30) for c in colour)
        draw.rectangle((x, top, x + bw, top + max(6, height // 300)), fill=edge)
        # windows: a loose grid of panes a little darker than the wall (some lit), with a sill; kept
        # low in contrast so that OCR does not take the grid for glyphs
        pane_w, pane_h = rng.randint(30, 60), rng.randint(40, 80)
        gap_x, gap_y = rng.randint(25, 60), rng.randint(35, 70)
        for wy in range(top + gap_y, horizon - pane_h, pane_h + gap_y):
            for wx in range(x + gap_x, x + bw - pane_w - gap_x // 2, pane_w + gap_x):
                if rng.random() < 0.12:
                    pane = tuple(min(255, int(c * 0.25 + 175)) for c in (colour[0] + 20, colour[1] + 10, colour[2] - 10))
                else:
                    k = rng.uniform(0.55, 0.75)
                    pane = (int(colour[0] * k), int(colour[1] * k), int(colour[2] * k + 12))
                draw.rectangle((wx, wy, wx + pane_w, wy + pane_h), fill=pane)
                draw.rectangle((wx - 3, wy + pane_h, wx + pane_w + 3, wy + pane_h + 4), fill=edge)
        facades.append((x, top, x + bw, horizon))
        x += bw + rng.randint(-30, 60)
    return facades


def _load_photos() -> list[Image.Image]:
    paths = sorted(PHOTOS_DIR.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no bundled photos in {PHOTOS_DIR}")
    return [Image.open(p).convert("RGB") for p in paths]


def _posters(img: Image.Image, rng: random.Random, photos: list[Image.Image], horizon: int) -> None:
    """Real photos as billboards on legs (lower half) and posters on facades (upper half)."""
    width, height = img.size
    draw = ImageDraw.Draw(img)
    order = list(range(len(photos)))
    rng.shuffle(order)
    for k, idx in enumerate(order):
        photo = photos[idx]
        target_w = rng.randint(width // 7, width // 4)
        scale = target_w / photo.width
        pw, ph = target_w, int(photo.height * scale)
        x = int((k + rng.uniform(0.1, 0.5)) * width / len(order))
        x = min(x, width - pw - 20)
        if k % 2 == 0:  # billboard standing on the ground
            y = horizon - ph // 2 + rng.randint(-height // 20, height // 20)
            leg = max(8, pw // 40)
            for lx in (x + pw // 5, x + 4 * pw // 5):
                draw.rectangle((lx, y + ph, lx + leg, min(height, y + ph + height // 6)), fill=(60, 60, 64))
        else:  # poster on a facade
            y = rng.randint(int(height * 0.12), max(int(height * 0.12) + 1, horizon - ph - 20))
        frame = max(6, pw // 60)
        draw.rectangle((x - frame, y - frame, x + pw + frame, y + ph + frame), fill=(35, 35, 38))
        img.paste(photo.resize((pw, ph), Image.LANCZOS), (x, y))


# --- signs ------------------------------------------------------------------------------------


def _sign_image(text: str, font_size: int, rng: random.Random) -> tuple[Image.Image, int]:
    font = _font(font_size)
    left, top, right, bottom = font.getbbox(text)
    ink_w, ink_h = right - left, bottom - top
    pad_x, pad_y = max(6, int(ink_h * 0.7)), max(5, int(ink_h * 0.55))
    border = max(2, ink_h // 10)
    w, h = ink_w + 2 * pad_x, ink_h + 2 * pad_y
    plate = (rng.randint(228, 250), rng.randint(226, 248), rng.randint(215, 240))
    ink = rng.choice([(25, 25, 30), (20, 40, 90), (90, 20, 20), (15, 60, 35)])
    sign = Image.new("RGBA", (w, h), plate + (255,))
    d = ImageDraw.Draw(sign)
    d.rectangle((0, 0, w - 1, h - 1), outline=(70, 70, 75, 255), width=border)
    d.text((pad_x - left, pad_y - top), text, font=font, fill=ink + (255,))
    return sign, ink_h


def _place_sign(rng: random.Random, cell: tuple[int, int], size: tuple[int, int], width: int, height: int):
    """Top-left corner for a plate of `size` in `cell`, GRID_MARGIN away from its edges, or None."""
    row, col = cell
    mx, my = GRID_MARGIN * width, GRID_MARGIN * height
    x_lo, x_hi = col * width / 3 + mx, (col + 1) * width / 3 - mx - size[0]
    y_lo, y_hi = row * height / 3 + my, (row + 1) * height / 3 - my - size[1]
    if x_hi < x_lo or y_hi < y_lo:
        return None
    return int(math.ceil(rng.uniform(x_lo, x_hi))), int(math.ceil(rng.uniform(y_lo, y_hi)))


def _tiers(rng: random.Random, index: int) -> list[str]:
    count = rng.randint(2, 4)
    tiers = ["medium"]
    if index % 2 == 0:
        tiers.append("large")
    if index % 3 != 2:
        tiers.append("small")
    while len(tiers) < count:
        tiers.append(rng.choice(["medium", "small", "medium"]))
    tiers = tiers[:max(count, 2)]
    rng.shuffle(tiers)
    return tiers


def _street_background(nrng: np.random.Generator, rng: random.Random, width: int, height: int, horizon: int,
                       photos: list[Image.Image]) -> Image.Image:
    """A bundled photo stretched over the whole scene (cover, soft from the upscale), the others as posters."""
    photo = photos[rng.randrange(len(photos))]
    k = max(width / photo.width, height / photo.height)
    big = photo.resize((math.ceil(photo.width * k), math.ceil(photo.height * k)), Image.BICUBIC)
    left, top = rng.randint(0, big.width - width), rng.randint(0, big.height - height)
    img = big.crop((left, top, left + width, top + height))
    tone = _smooth_noise(nrng, width, height, 240)[..., None] * 0.3 + 0.85
    img = Image.fromarray(np.clip(np.asarray(img, np.float32) * tone, 0, 255).astype(np.uint8))
    _posters(img, rng, photos, horizon)
    return img


def _demo_background(nrng: np.random.Generator, rng: random.Random, width: int, height: int, horizon: int,
                     photos: list[Image.Image]) -> Image.Image:
    img = _background(nrng, rng, width, height, horizon)
    _buildings(ImageDraw.Draw(img), rng, width, height, horizon)
    _posters(img, rng, photos, horizon)
    return img


def _demo_sign(text: str, ink: float, rng: random.Random) -> tuple[Image.Image, int, int, None]:
    font_size = _font_size_for(ink)
    sign, ink_h = _sign_image(text, font_size, rng)
    return sign, ink_h, font_size, None


# The street family's sign texts: two-word names (a space a reader can lose or invent: "NO PARKING",
# "MUSEUM") and codes, in fonts, spacing and colours of its own.
STREET_WORDS = (
    "MUSEUM", "NO PARKING", "BUS STOP", "TAXI RANK", "CITY HALL", "FIRST AID", "POST OFFICE", "WAY OUT",
    "CAR PARK", "TOILETS", "HARBOUR", "THEATRE", "GALLERY", "BAKERY", "CHEMIST", "MARKET HALL", "TOWN SQUARE",
    "RIVER WALK", "OLD TOWN", "SCHOOL", "STADIUM", "ARCADE", "DENTIST", "PARK LANE", "HIGH STREET", "CHURCH",
)
STREET_FONTS = ("DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSerif-Bold.ttf",
                "STIXGeneralBol.ttf", "DejaVuSans.ttf")
# (plate, ink): white, yellow and light grey plates with dark letters; blue, green, brown and red with light
STREET_PLATES = (((250, 250, 246), (20, 30, 90)), ((245, 205, 40), (20, 20, 20)), ((215, 218, 222), (160, 20, 25)),
                 ((20, 70, 150), (245, 245, 245)), ((10, 95, 55), (240, 240, 235)), ((95, 60, 35), (240, 225, 190)),
                 ((170, 25, 30), (250, 250, 250)))


def _street_font(name: str) -> Callable[[int], ImageFont.FreeTypeFont]:
    import matplotlib  # its data ship DejaVu and STIX fonts (the `data` extra): no system font needed

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    return lambda size: ImageFont.truetype(str(path), size)


def _street_texts(rng: random.Random, count: int, used: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        word, style = rng.choice(STREET_WORDS), rng.random()
        if style < 0.4:
            text = word
        elif style < 0.7:
            text = f"{word} {rng.randint(2, 9)}"
        else:
            text = f"{word} {rng.choice(_CODE_LETTERS)}{rng.choice(_CODE_DIGITS)}"
        if len(text) <= 20 and normalize_text(text) not in used:
            used.add(normalize_text(text))
            out.append(text)
    return out


def _street_sign(text: str, ink: float, rng: random.Random) -> tuple[Image.Image, int, int, str]:
    """A plate in one of STREET_PLATES with `text` in one of STREET_FONTS, its letters spaced apart by up to
    0.16 of the font size (a word space then is a space and twice that)."""
    name = rng.choice(STREET_FONTS)
    font_of = _street_font(name)
    font_size = _font_size_for(ink, font_of)
    font = font_of(font_size)
    track = rng.uniform(0.0, 0.16) * font_size
    x, placed = 0.0, []
    for char in text:
        placed.append((x, char))
        x += font.getlength(char) + track
    boxes = [font.getbbox(char) for _, char in placed if char != " "]
    lefts = [at + box[0] for (at, char), box in zip([p for p in placed if p[1] != " "], boxes)]
    rights = [at + box[2] for (at, char), box in zip([p for p in placed if p[1] != " "], boxes)]
    top, bottom = min(box[1] for box in boxes), max(box[3] for box in boxes)
    ink_w, ink_h = math.ceil(max(rights) - min(lefts)), bottom - top
    pad_x, pad_y = max(6, int(ink_h * rng.uniform(0.5, 0.9))), max(5, int(ink_h * rng.uniform(0.4, 0.7)))
    plate, colour = rng.choice(STREET_PLATES)
    sign = Image.new("RGBA", (ink_w + 2 * pad_x, ink_h + 2 * pad_y), plate + (255,))
    draw = ImageDraw.Draw(sign)
    if rng.random() < 0.5:  # a thin border in the letters' colour
        draw.rectangle((0, 0, sign.width - 1, sign.height - 1), outline=colour + (255,), width=max(2, ink_h // 12))
    for at, char in placed:
        draw.text((pad_x - min(lefts) + at, pad_y - top), char, font=font, fill=colour + (255,))
    return sign, ink_h, font_size, name


@dataclass(frozen=True)
class Family:
    """A scene family: the name of its random streams, its backdrop, its sign texts and how a sign is drawn
    (`sign(text, ink height, rng)` -> plate image, ink height, font size, font file or None: Pillow's own)."""

    stream: str
    backdrop: Callable[..., Image.Image]
    texts: Callable[[random.Random, int, set[str]], list[str]]
    sign: Callable[[str, float, random.Random], tuple[Image.Image, int, int, str | None]]
    noise: tuple[int, ...] = ()  # appended to the numpy seed: the demo's stream stays [seed, index]


FAMILIES = {
    "demo": Family("scene", _demo_background, _texts, _demo_sign),
    "street": Family("street", _street_background, _street_texts, _street_sign, (2,)),
}


def _scene(index: int, seed: int, photos: list[Image.Image], used: set[str],
           family: Family = FAMILIES["demo"]) -> tuple[bytes, dict]:
    rng = random.Random(f"mmcof-{family.stream}-{seed}-{index}")
    nrng = np.random.default_rng([seed, index, *family.noise])
    width, height = SIZES[(index + seed) % len(SIZES)]
    horizon = int(height * rng.uniform(0.48, 0.58))

    img = family.backdrop(nrng, rng, width, height, horizon, photos)

    tiers = _tiers(rng, index)
    cells = [(r, c) for r in range(3) for c in range(3)]
    rng.shuffle(cells)
    texts = family.texts(rng, 40, set(used))
    signs, pasted = [], []
    for tier in tiers:
        budget, target = TIERS[tier]
        rw, rh = frame_size(width, height, budget)
        ink = target * math.sqrt(width * height / (rw * rh))
        angle = rng.uniform(-2.5, 2.5)
        placed = None
        for text in list(texts):
            sign, ink_h, font_size, font = family.sign(text, ink, rng)
            sign = sign.rotate(angle, resample=Image.BICUBIC, expand=True)
            for cell in cells:
                at = _place_sign(rng, cell, sign.size, width, height)
                if at is not None:
                    placed = (text, sign, ink_h, font_size, font, cell, at)
                    break
            if placed:
                break
        if placed is None:
            continue
        text, sign, ink_h, font_size, font, cell, (x, y) = placed
        texts.remove(text)
        cells.remove(cell)
        used.add(normalize_text(text))
        pasted.append((sign, x, y, cell))
        signs.append({
            "text": text,
            "box": [x, y, x + sign.width, y + sign.height],
            "cell": list(cell),
            "tier": tier,
            "text_height": ink_h,
            "font_size": font_size,
            "angle": round(angle, 2),
            **({"font": font} if font else {}),
        })
    _put_up(img, pasted, horizon)
    signs.sort(key=lambda s: (s["cell"][0], s["cell"][1]))
    return _photo_finish(img, nrng), {"width": width, "height": height, "signs": signs}


def _put_up(img: Image.Image, pasted: list[tuple[Image.Image, int, int, tuple[int, int]]], horizon: int) -> None:
    """Paste the placed signs (sign, x, y, grid cell), each one high in the frame or off the ground on a post;
    the posts first, so that none runs over another sign."""
    draw = ImageDraw.Draw(img)
    for sign, x, y, cell in pasted:
        if cell[0] > 0 or y + sign.height > horizon * 0.8:
            post_w = max(6, sign.width // 30)
            post_x = x + sign.width // 2 - post_w // 2
            post_end = min(img.height, max(y + 3 * sign.height, horizon + (cell[0] * img.height) // 10))
            draw.rectangle((post_x, y + sign.height // 2, post_x + post_w, post_end), fill=(70, 72, 76))
    for sign, x, y, cell in pasted:
        img.paste(sign, (x, y), sign)


def _photo_finish(img: Image.Image, nrng: np.random.Generator) -> bytes:
    """The scene as JPEG bytes, with a photo-like finish: mild sensor noise and vignetting."""
    arr = np.asarray(img, dtype=np.float32)
    arr += nrng.normal(0.0, 3.0, arr.shape).astype(np.float32)
    yy = np.linspace(-1, 1, img.height, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, img.width, dtype=np.float32)[None, :]
    arr *= (1.0 - 0.12 * (xx * xx + yy * yy) / 2)[..., None]
    out = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.write_bytes(data)


def generate_scenes(out_dir: Path, count: int = 6, seed: int = 0, family: str = "demo") -> list[Path]:
    """Write `count` scenes (scene_000.jpg, ...), `scenes.json` and `photos/` into out_dir; returns
    the scene paths. Deterministic in (count, seed, family: a key of FAMILIES). The photos are read before anything is written, so a
    missing photo leaves no half-made folder."""
    photos = _load_photos()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    photo_dir = out_dir / "photos"
    photo_dir.mkdir(exist_ok=True)
    for src in sorted(PHOTOS_DIR.iterdir()):  # the photos and their NOTICE.md (licences)
        if src.is_file():
            _write(photo_dir / src.name, src.read_bytes())
    used: set[str] = set()
    paths, manifest = [], []
    for index in range(count):
        data, info = _scene(index, seed, photos, used, FAMILIES[family])
        path = out_dir / f"scene_{index:03d}.jpg"
        _write(path, data)
        paths.append(path)
        manifest.append({"file": path.name, **info})
    doc = {"seed": seed, **({"family": family} if family != "demo" else {}), "grid_margin": GRID_MARGIN,
           "scenes": manifest}
    _write(out_dir / "scenes.json", (json.dumps(doc, indent=2) + "\n").encode())
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mmcof_gen.scenes", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="demo", help="scene family (FAMILIES)")
    args = parser.parse_args(argv)
    for path in generate_scenes(args.out, args.count, args.seed, args.family):
        print(path)


if __name__ == "__main__":
    main()
