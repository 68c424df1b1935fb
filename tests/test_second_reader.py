"""The second reader of text tasks' ground truth (Tesseract, models/ocr.py TesseractLine) reads a line as written,
spaces included, where PP-OCR's habits (dropped spaces, wide letter spacing taken for words) mislead."""

import pytest
from PIL import Image, ImageDraw, ImageOps

from mmcof_gen.models.ocr import TesseractLine
from mmcof_gen.scenes import _street_font


def _tracked(text: str, track: float, size: int = 40) -> tuple[Image.Image, tuple]:
    """`text` in DejaVu Sans Bold with `track` of the font size between letters, a plate edge on the left, and
    the line's box as OCR draws it (a third of the ink height around)."""
    font = _street_font("DejaVuSans-Bold.ttf")(size)
    image = Image.new("RGB", (60 + round(len(text) * size * (0.9 + track)), 120), (240, 238, 228))
    draw = ImageDraw.Draw(image)
    x = 40.0
    for char in text:
        draw.text((x, 40), char, font=font, fill=(20, 30, 90))
        x += font.getlength(char) + track * size
    left, top, right, bottom = draw.textbbox((40, 40), text[0], font=font)
    margin = (bottom - top) // 3
    draw.line((30 - margin, 0, 30 - margin, 120), fill=(20, 30, 90), width=3)  # the plate's edge, read as "|"
    return image, (30 - margin - 4, top - margin, round(x) + margin, bottom + margin)


@pytest.fixture(scope="module")
def reader():
    return TesseractLine()


@pytest.mark.parametrize("text, track", [("MUSEUM", 0.16), ("NO PARKING", 0.12), ("EXIT 7", 0.0), ("BUS STOP", 0.0)])
def test_tesseract_reads_spaced_letters_as_one_word_and_keeps_word_spaces(reader, text, track):
    image, box = _tracked(text, track)
    assert reader.read(image, box)[0] == text  # the first reading, at a 40-px line
    assert reader.read(ImageOps.invert(image), box)[0] == text  # light letters on a dark plate
    assert reader.read(Image.new("RGB", image.size, (200, 200, 200)), box) == []
