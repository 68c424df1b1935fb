"""imaging: exact sizes and boxes (hand-computed in the comments), the crop function against the spec, and
loading of the awkward files real image folders contain."""

import math
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mmcof_gen import imaging
from mmcof_gen.imaging import (
    ImageError,
    InvalidBox,
    box_area,
    clip_box,
    crop_to_frame,
    crop_zoom,
    discover_images,
    file_sha256,
    frame_from_image,
    frame_size,
    image_sha256,
    image_size,
    image_to_png_bytes,
    iou,
    load_image,
    make_frame,
    make_frames,
    scale_box,
    smart_resize,
    validate_box,
    zoom_region,
)

BIG = 250_000_000


# ---------------------------------------------------------------- smart_resize and frames


@pytest.mark.parametrize(("height", "width", "max_pixels", "expected"), [
    # round: 810/28 = 28.93 -> 29*28 = 812, 1080/28 = 38.57 -> 39*28 = 1092; 812*1092 is within bounds
    (810, 1080, 3840 * 3840, (812, 1092)),
    # 812*1092 > 448^2 -> beta = sqrt(810*1080 / 200704) = 2.0877;
    # 810/beta/28 = 13.86 -> 364, 1080/beta/28 = 18.47 -> 504
    (810, 1080, 448 * 448, (364, 504)),
    # beta = sqrt(3200*2400 / 200704) = 6.1859; 3200/beta/28 = 18.47 -> 504, 2400/beta/28 = 13.86 -> 364
    (3200, 2400, 448 * 448, (504, 364)),
    # 28*28 < 112^2 -> beta = sqrt(12544 / 400) = 5.6; ceil(20*5.6/28) = 4 -> 112 on both sides
    (20, 20, 3840 * 3840, (112, 112)),
    # beta = sqrt(12544 / 300) = 6.4664; ceil(10*beta/28 = 2.31) = 3 -> 84, ceil(30*beta/28 = 6.93) = 7 -> 196
    (10, 30, 3840 * 3840, (84, 196)),
    # aspect exactly 200 is allowed: beta = sqrt(12544/200) = 7.9196;
    # ceil(0.28) -> 28, ceil(200*beta/28 = 56.57) -> 1596
    (1, 200, 3840 * 3840, (28, 1596)),
])
def test_smart_resize_matches_qwen(height, width, max_pixels, expected):
    assert smart_resize(height, width, 28, 112 * 112, max_pixels) == expected


def test_smart_resize_rejects_aspect_over_200():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(1, 201)


@pytest.mark.parametrize(("size", "resolution", "expected"), [
    # 6000x4000: beta = sqrt(24e6 / R^2); R=448: 4000/10.935/28 = 13.06 -> 364, 6000/10.935/28 = 19.6 -> 532
    ((6000, 4000), 448, (532, 364)),
    # R=1024: beta = 4.7842; 29.86 -> 812, 44.79 -> 1232
    ((6000, 4000), 1024, (1232, 812)),
    # R=1920: beta = 2.5516; 55.99 -> 1540, 83.98 -> 2324
    ((6000, 4000), 1920, (2324, 1540)),
    # small image upscaled: 56*112 < 112^2 -> beta = sqrt(12544/5000) = 1.5839; ceil(2.83) -> 84, ceil(5.66) -> 168
    ((100, 50), 448, (168, 84)),
    # 4:3 at any scale gives the 1080x810 answer
    ((12000, 9000), 448, (504, 364)),
])
def test_frame_size_is_smart_resize_as_width_height(size, resolution, expected):
    assert frame_size(*size, resolution) == expected


# ---------------------------------------------------------------- the crop function


def _spec_crop(frame, box):
    """cof-format.md's crop function, written out again from the spec (with qwen-vl-utils' smart_resize)."""
    def qwen_smart_resize(height, width, factor, min_pixels, max_pixels):
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

    enlarge, scale_up, min_pixels, max_pixels = 1.5, 2, 112 * 112, 3840 * 3840
    (x1, y1, x2, y2), (W, H) = box, frame.size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * enlarge, (y2 - y1) * enlarge
    region = (int(max(0, cx - w / 2)), int(max(0, cy - h / 2)), int(min(W, cx + w / 2)), int(min(H, cy + h / 2)))
    crop = frame.crop(region)
    nh, nw = qwen_smart_resize(crop.height * scale_up, crop.width * scale_up, 28, min_pixels, max_pixels)
    return crop.resize((nw, nh), Image.LANCZOS).convert("RGB")


@pytest.fixture(scope="module")
def noise_frame():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (391, 517, 3), dtype=np.uint8))


@pytest.mark.parametrize(("box", "region"), [
    ((10, 20, 30, 40), (5, 15, 35, 45)),  # centre (20, 30), 30x30
    # on the bottom-right border: centre (508.5, 385.5), 25.5x16.5 -> (495.75, 377.25, 521.25, 393.75), clipped
    ((500, 380, 517, 391), (495, 377, 517, 391)),
    ((0, 0, 1, 1), (0, 0, 1, 1)),  # 1x1 at the corner: (-0.25, -0.25, 1.25, 1.25) -> (0, 0, 1, 1)
    ((100, 100, 103, 102), (99, 99, 103, 102)),  # 3x2: (99.25, 99.5, 103.75, 102.5) truncated
    ((0, 0, 517, 391), (0, 0, 517, 391)),  # the whole frame enlarges past every edge
    ((37, 52, 200, 131), (0, 32, 240, 150)),  # centre (118.5, 91.5), 244.5x118.5; left edge clipped at 0
])
def test_zoom_region_enlarges_about_centre_and_clips(box, region):
    assert zoom_region(box, 517, 391) == region


@pytest.mark.parametrize(("box", "size"), [
    # crop 22x14 -> smart_resize(28, 44): 28x56 < 112^2, beta = 3.1909: ceil(3.19) -> 112, ceil(5.01) -> 168
    ((500, 380, 517, 391), (168, 112)),
    # crop 1x1 -> smart_resize(2, 2): beta = 56, ceil(4.0) = 4 -> 112x112
    ((0, 0, 1, 1), (112, 112)),
    # crop 4x3 -> smart_resize(6, 8): beta = sqrt(12544/48) = 16.166; ceil(3.46) -> 112, ceil(4.62) -> 140
    ((100, 100, 103, 102), (140, 112)),
    # crop 517x391 -> smart_resize(782, 1034): round(27.93) -> 784, round(36.93) -> 1036, within bounds
    ((0, 0, 517, 391), (1036, 784)),
    # crop 240x118 -> smart_resize(236, 480): round(8.43) -> 224, round(17.14) -> 476
    ((37, 52, 200, 131), (476, 224)),
])
def test_crop_zoom_matches_spec_pixel_for_pixel(noise_frame, box, size):
    crop = crop_zoom(noise_frame, box)
    assert crop.size == size and crop.mode == "RGB"
    assert np.array_equal(np.asarray(crop), np.asarray(_spec_crop(noise_frame, box)))


def test_crop_zoom_caps_large_crops_at_3840_squared():
    # crop 3000x2000 -> smart_resize(4000, 6000): 4004*5992 > 3840^2, beta = 1.2758; 111.97 -> 3108, 167.96 -> 4676
    crop = crop_zoom(Image.new("RGB", (3000, 2000), (9, 8, 7)), [0, 0, 3000, 2000])
    assert crop.size == (4676, 3108)


def test_crop_zoom_enlarges_float_boxes_before_truncating_as_the_release():
    frame = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1200, 1600, 3), dtype=np.uint8))
    box = [1100.6, 750.4, 1300.5, 880.5]
    # centre (1200.55, 815.45), 299.85 x 195.15 -> (1050.625, 717.875, 1350.475, 913.025), truncated
    assert zoom_region(box, 1600, 1200) == (1050, 717, 1350, 913)
    assert np.array_equal(np.asarray(crop_zoom(frame, box)), np.asarray(_spec_crop(frame, box)))
    rounded_first = crop_zoom(frame, (1101, 750, 1300, 880))  # what rounding first used to crop: (1051, 717, 1349, 912)
    assert zoom_region((1101, 750, 1300, 880), 1600, 1200) == (1051, 717, 1349, 912)
    assert image_sha256(crop_zoom(frame, box)) != image_sha256(rounded_first)


def test_crop_zoom_rejects_invalid_box_with_reason(noise_frame):
    with pytest.raises(InvalidBox, match=r"box \[10, 5, 8, 20\] has x2 <= x1"):
        crop_zoom(noise_frame, [10, 5, 8, 20])


def test_crop_zoom_rejects_region_too_thin_for_qwen():
    # a 1x300 box zooms to a 1x450 region: aspect 450 > 200
    with pytest.raises(InvalidBox, match="too thin"):
        crop_zoom(Image.new("RGB", (500, 500)), [0, 0, 1, 300])


# ---------------------------------------------------------------- boxes


@pytest.mark.parametrize(("box", "reason"), [
    ([1, 2, 3], "4 numbers"),
    ([1, 2, 3, 4, 5], "4 numbers"),
    ("1, 2, 3, 4", "4 numbers"),
    (None, "4 numbers"),
    ([1, 2, "3", 4], "not a number"),
    ([True, 2, 3, 4], "not a number"),
    ([1, 2, 3, None], "not a number"),
    ([float("nan"), 2, 3, 4], "not a finite number"),
    ([1, 2, float("inf"), 4], "not a finite number"),
    ([10, 5, 8, 20], "x2 <= x1"),
    ([10, 5, 10, 20], "x2 <= x1"),
    ([1, 20, 8, 20], "y2 <= y1"),
    ([-1, 2, 3, 4], "outside the 100x50 image"),
    ([1, -2, 3, 4], "outside"),
    ([1, 2, 101, 4], "outside"),
    ([1, 2, 3, 51], "outside"),
])
def test_validate_box_rejects_bad_boxes(box, reason):
    with pytest.raises(InvalidBox, match=reason):
        validate_box(box, 100, 50)


def test_validate_box_rounds_floats_and_accepts_edges():
    assert validate_box([0, 0, 100, 50], 100, 50) == (0, 0, 100, 50)
    assert validate_box((1.4, 2.6, 99.5, 50.2), 100, 50) == (1, 3, 100, 50)  # round(99.5) = 100 (to even)
    assert validate_box([np.int64(1), np.float32(2.0), 3, 4], 100, 50) == (1, 2, 3, 4)
    assert all(type(v) is int for v in validate_box([1.0, 2.0, 3.0, 4.0], 100, 50))


@pytest.mark.parametrize(("crop_box", "expected"), [
    # region (100, 50, 250, 125) = 150x75 shown at 308x154: x * 150/308, y * 75/154
    ((30, 20, 100, 60), (114, 59, 149, 80)),  # 14.61 -> 14, 9.74 -> 9, 48.70 -> 49, 29.22 -> 30
    ((30.5, 20.25, 99.9, 60.0), (114, 59, 149, 80)),  # 14.85, 9.86, 48.65, 29.22
    ((0, 0, 154, 77), (100, 50, 175, 88)),  # 75.0 exactly stays 75; 37.5 -> 38
    ((0, 0, 308, 154), (100, 50, 250, 125)),  # the whole crop is the whole region
    ((300, 150, 400, 200), (246, 123, 250, 125)),  # past the crop: clipped to the region
])
def test_crop_to_frame_maps_outward_and_clips(crop_box, expected):
    assert crop_to_frame(crop_box, (308, 154), (100, 50, 250, 125)) == expected


def test_crop_to_frame_round_trip_covers_the_original_box(noise_frame):
    box = (37, 52, 200, 131)
    region = zoom_region(box, *noise_frame.size)  # (0, 32, 240, 150), shown at 476x224
    crop = crop_zoom(noise_frame, box)
    # the box in crop pixels, rounded: 37*476/240 = 73.4, 20*224/118 = 37.97, 200*476/240 = 396.7, 99*224/118 = 187.9
    back = crop_to_frame((73, 37, 397, 188), crop.size, region)
    # 73*240/476 = 36.8 -> 36; 32 + 37*118/224 = 51.5 -> 51;
    # 397*240/476 = 200.2 -> 201; 32 + 188*118/224 = 131.04 -> 132
    assert back == (36, 51, 201, 132)
    assert back[0] <= box[0] and back[1] <= box[1] and back[2] >= box[2] and back[3] >= box[3]


def test_crop_to_frame_rejects_box_entirely_outside_the_crop():
    with pytest.raises(InvalidBox):
        crop_to_frame((400, 10, 500, 20), (308, 154), (100, 50, 250, 125))


def test_box_area_and_iou():
    assert box_area((2, 3, 12, 8)) == 50
    assert box_area((5, 5, 2, 9)) == 0
    assert iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_clip_box_clips_rounds_outward_and_refuses_empty():
    assert clip_box((-5, -5, 10, 10), 8, 8) == (0, 0, 8, 8)
    assert clip_box((1.5, 2.2, 3.7, 4.1), 8, 8) == (1, 2, 4, 5)
    with pytest.raises(InvalidBox, match="no area"):
        clip_box((10, 10, 20, 20), 8, 8)


def test_scale_box_rounds_outward_without_float_noise():
    assert scale_box((100, 250, 300, 501), 0.448, 0.448) == (44, 112, 135, 225)  # 44.8, 112.0, 134.4, 224.45
    assert scale_box((0, 0, 100, 100), 1.1, 1.1) == (0, 0, 110, 110)  # 100 * 1.1 = 110.00000000000001
    assert scale_box((49, 49, 98, 98), 1 / 49, 1 / 49) == (1, 1, 2, 2)  # 0.9999999999999999, 1.9999999999999998


# ---------------------------------------------------------------- loading


def _save(image, path, **params):
    image.save(path, **params)
    return path


def test_zero_byte_file_is_an_image_error(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageError, match=r"empty\.jpg.*empty"):
        load_image(path, BIG)
    with pytest.raises(ImageError, match="empty"):
        image_size(path, BIG)


def test_text_file_named_jpg_is_an_image_error(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture\n")
    with pytest.raises(ImageError, match=r"notes\.jpg.*not an image"):
        load_image(path, BIG)


def test_corrupt_bytes_are_an_image_error(tmp_path):
    path = tmp_path / "corrupt.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + np.random.default_rng(1).bytes(500))
    with pytest.raises(ImageError, match=r"corrupt\.png"):
        load_image(path, BIG)


def test_truncated_jpeg_is_detected_at_load(tmp_path):
    noise = np.random.default_rng(2).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = _save(Image.fromarray(noise), tmp_path / "full.jpg", quality=90).read_bytes()
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert image_size(path, BIG) == (300, 200)  # the header is intact
    with pytest.raises(ImageError, match=r"half\.jpg.*truncated"):
        load_image(path, BIG)


def test_missing_file_is_an_image_error(tmp_path):
    with pytest.raises(ImageError, match=r"missing\.png"):
        image_size(tmp_path / "missing.png", BIG)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (200, 0, 0, 128)])
    image = load_image(_save(rgba, tmp_path / "alpha.png"), BIG)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert image.getpixel((1, 0)) == (10, 20, 30)
    # half transparent: 200*128/255 + 255*127/255 = 227.4; 0 + 127 = 127
    assert np.allclose(image.getpixel((2, 0)), (227, 127, 127), atol=1)


def test_palette_png_with_transparency(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putdata([0, 1])
    image = load_image(_save(palette, tmp_path / "palette.png", transparency=0), BIG)
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 0)) == (255, 0, 0)


def test_la_png_is_composited_on_white(tmp_path):
    la = Image.new("LA", (1, 1), (0, 0))
    assert load_image(_save(la, tmp_path / "la.png"), BIG).getpixel((0, 0)) == (255, 255, 255)


def test_cmyk_jpeg_colours(tmp_path):
    red = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    image = load_image(_save(red, tmp_path / "cmyk.jpg", quality=95), BIG)
    assert image.mode == "RGB" and np.allclose(image.getpixel((16, 16)), (255, 0, 0), atol=6)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768, 0, 257, 256]], dtype=np.uint16)
    image = load_image(_save(Image.fromarray(values), tmp_path / "deep.png"), BIG)
    # round(v / 257): 255, 127.5 -> 128, 0, 1, 0.996 -> 1
    assert [image.getpixel((x, 0)) for x in range(5)] == [(v, v, v) for v in (255, 128, 0, 1, 1)]


@pytest.mark.parametrize("mode", ["1", "L", "F", "I"])
def test_other_modes_become_rgb(tmp_path, mode):
    image = load_image(_save(Image.new(mode, (4, 3), 1), tmp_path / "mode.tif"), BIG)
    assert image.mode == "RGB" and image.size == (4, 3)


def _rotated_jpeg(path, size, orientation=6):
    """A JPEG stored at `size` with a red block at its stored top-left corner and the given EXIF orientation."""
    stored = Image.new("RGB", size, (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, path, quality=95, exif=exif.tobytes())


def test_exif_orientation_is_applied(tmp_path):
    path = _rotated_jpeg(tmp_path / "rotated.jpg", (40, 20))
    assert image_size(path, BIG) == (20, 40)
    image = load_image(path, BIG)
    assert image.size == (20, 40)
    # orientation 6 = rotate 90 degrees clockwise to display: the stored top-left goes to the top-right
    assert np.allclose(image.getpixel((16, 3)), (255, 0, 0), atol=30)
    assert np.allclose(image.getpixel((3, 3)), (0, 0, 255), atol=30)


def test_draft_size_is_taken_in_stored_coordinates(tmp_path):
    path = _rotated_jpeg(tmp_path / "rotated.jpg", (1600, 800))
    # shown 800x1600; target 100x200 shown = 200x100 stored -> DCT scale 1/8 -> 200x100 stored -> 100x200 shown
    # (without the swap the decoder would pick 1/4 and return 200x400)
    assert load_image(path, BIG, target_size=(100, 200)).size == (100, 200)


def test_header_bomb_is_refused_before_decoding(tmp_path):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path = tmp_path / "bomb.png"  # a PNG header claiming 100000x100000 pixels, no data
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match=r"bomb\.png is 100000x100000 = 10,000,000,000 pixels, over the limit"):
        image_size(path, BIG)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, BIG)


def test_max_pixels_is_our_configurable_limit(tmp_path):
    path = _save(Image.new("RGB", (100, 50)), tmp_path / "small.jpg")
    assert load_image(path, 5000).size == (100, 50)
    with pytest.raises(ImageError, match="over the limit of 4,999"):
        make_frame(path, 448, 4999)


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory):
    """12000x9000 (108 megapixels, above Pillow's own bomb threshold), plain colour so it encodes fast."""
    return _save(Image.new("RGB", (12000, 9000), (40, 120, 200)), tmp_path_factory.mktemp("huge") / "huge.jpg",
                 quality=90)


def test_huge_jpeg_loads_under_our_limit_with_draft_decoding(huge_jpeg):
    assert image_size(huge_jpeg, BIG) == (12000, 9000)
    # frame (504, 364): 12000//504 = 23, 9000//364 = 24 -> DCT scale 1/8 -> 1500x1125 decoded, not 108 MP
    assert load_image(huge_jpeg, BIG, target_size=(504, 364)).size == (1500, 1125)
    frame = make_frame(huge_jpeg, 448, BIG)
    assert frame.size == frame_size(12000, 9000, 448) == (504, 364)
    assert np.allclose(frame.getpixel((250, 180)), (40, 120, 200), atol=3)


@pytest.fixture(scope="module")
def photo_jpeg(tmp_path_factory):
    """3000x2000 photo-like JPEG: smooth colour blobs plus fine noise."""
    rng = np.random.default_rng(3)
    blobs = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).resize((3000, 2000), Image.BICUBIC)
    pixels = np.asarray(blobs).astype(np.int16) + rng.integers(-12, 13, (2000, 3000, 3), dtype=np.int16)
    return _save(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)),
                 tmp_path_factory.mktemp("photo") / "photo.jpg", quality=90)


def test_make_frame_is_deterministic_and_exactly_frame_size(photo_jpeg):
    # 3000x2000 at R=448: beta = sqrt(6e6/200704) = 5.4676; 2000/beta/28 = 13.06 -> 364, 3000/beta/28 = 19.6 -> 532
    first = make_frame(photo_jpeg, 448, BIG)
    assert first.size == (532, 364) and first.mode == "RGB"
    assert image_sha256(make_frame(photo_jpeg, 448, BIG)) == image_sha256(first)
    assert image_to_png_bytes(make_frame(photo_jpeg, 448, BIG)) == image_to_png_bytes(first)


def test_draft_frame_is_close_to_full_decode_frame(photo_jpeg):
    drafted = np.asarray(make_frame(photo_jpeg, 448, BIG)).astype(np.int16)
    full = np.asarray(frame_from_image(load_image(photo_jpeg, BIG), 448)).astype(np.int16)
    assert drafted.shape == full.shape and np.abs(drafted - full).mean() < 2.0


def test_make_frames_decodes_once_per_draft_scale_and_matches_make_frame(photo_jpeg, tmp_path, monkeypatch):
    rotated = _rotated_jpeg(tmp_path / "rotated.jpg", (1600, 900))
    png = _save(Image.open(photo_jpeg).resize((900, 600)), tmp_path / "photo.png")
    resolutions = [224, 448, 672, 1024, 1920]
    loads = []
    monkeypatch.setattr(imaging, "load_image", lambda *args, **kw: loads.append(kw) or load_image(*args, **kw))
    # JPEG: one decode per DCT scale (3000x2000: 1/8, 1/4, 1/2 for 672 and 1024, 1 for 1920); PNG: one in all
    for path, decodes in ((photo_jpeg, 4), (rotated, 3), (png, 1)):
        loads.clear()
        frames = make_frames(path, resolutions, BIG)
        assert len(loads) == decodes, (path, loads)
        assert sorted(frames) == resolutions
        for resolution in resolutions:
            assert image_sha256(frames[resolution]) == image_sha256(make_frame(path, resolution, BIG)), (path, resolution)


def test_frame_from_small_image_upscales_to_min_pixels():
    assert frame_from_image(Image.new("RGB", (100, 50)), 448).size == (168, 84)


# ---------------------------------------------------------------- hashes


def test_hashes_compare_pixels_not_metadata(tmp_path):
    image = Image.new("RGB", (5, 4), (1, 2, 3))
    tagged = image.copy()
    tagged.info["icc_profile"] = b"not really a profile"
    assert image_to_png_bytes(image) == image_to_png_bytes(tagged)
    assert image_sha256(image) == image_sha256(tagged) == image_sha256(image.convert("RGBA"))
    assert image_sha256(image) != image_sha256(Image.new("RGB", (4, 5), (1, 2, 3)))  # same bytes, other size
    assert Image.open(_save(image, tmp_path / "x.png")).size == (5, 4)
    path = tmp_path / "bytes.bin"
    path.write_bytes(b"abc")
    assert file_sha256(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


# ---------------------------------------------------------------- discovery


def test_discover_images_walks_sorted_and_safely(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "outside"
    for rel in ["a.JPG", "b.png", "c.Jpeg", "notes.txt", "noext", ".hidden.jpg", ".cache/x.jpg",
                "sub/d.webp", "sub/e.TIFF", "sub/deeper/f.bmp", "Z/g.jpg"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    outside.mkdir()
    (outside / "o.jpg").write_bytes(b"x")
    os.symlink(root / "b.png", root / "link_in.jpg")
    os.symlink(outside / "o.jpg", root / "link_out.jpg")
    os.symlink(outside, root / "link_out_dir")
    os.symlink(root / "sub" / "deeper", root / "link_in_dir")
    os.symlink(root, root / "sub" / "loop")  # back to an enclosing directory: not followed
    os.symlink(root / "gone.jpg", root / "broken.jpg")

    found = [p.relative_to(root).as_posix() for p in discover_images(root)]
    assert found == ["a.JPG", "b.png", "c.Jpeg", "link_in.jpg", "Z/g.jpg", "link_in_dir/f.bmp",
                     "sub/d.webp", "sub/e.TIFF", "sub/deeper/f.bmp"]
    assert all(p.parent == root or root in p.parents for p in discover_images(root))  # paths under root, unresolved
