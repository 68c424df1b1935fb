import json

import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from mmcof_gen.config import DEFAULT_CONFIG, TextTasksConfig, load_config
from mmcof_gen.models.ocr import OcrEngine, TextHit, merge_lines
from mmcof_gen.scenes import _street_font, generate_scenes
from mmcof_gen.schema import RejectedTask
from mmcof_gen.tasks.base import task_prompts
from mmcof_gen.tasks.text_questions import Gap, reconcile, synthesize_text_tasks, word_gaps
from mmcof_gen.tasks.base import truth_size

PROMPTS = task_prompts(load_config(DEFAULT_CONFIG))


def _reading(text: str, box=(0, 0, 100, 30)) -> TextHit:
    """A reread of `text` whose letters, spaces included, are 10 px apart from x = 5 (a space 10 px wide)."""
    return TextHit(box, text, 0.99, tuple((c, 5 + 10 * k) for k, c in enumerate(text) if c != " "))


def _gaps(hit: TextHit) -> list[Gap]:
    """A certain word gap where each space of the hit's text is (as `_reading` places its letters)."""
    return [Gap(5 + 10 * k, True) for k, c in enumerate(hit.text) if c == " "]


def _synthesize(hits, read_again, size=(3000, 2000), original=(6000, 4000), gaps=_gaps, second=None):
    """`second`: the second reader's spelling of each whole-image reading; by default that of the 64-px reread."""
    def read_second(hit):
        if second is not None:
            return [second[hit.text]]
        first = read_again(hit, 64, 0.9)
        return [first.text] if first else []
    return synthesize_text_tasks(hits, size, original, "a.jpg", "sha", PROMPTS, TextTasksConfig(), read_again, gaps,
                                 read_second)


def _tasks(hits, size=(3000, 2000), original=(6000, 4000)):
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: _reading(hit.text), size, original)
    assert rejected == []
    return tasks


def test_small_confident_text_alone_in_its_cell_becomes_a_question_with_original_pixel_truth():
    tasks = _tasks([TextHit((200, 1700, 300, 1730), "GATE 14", 0.97)])
    assert len(tasks) == 1
    task = tasks[0]
    assert task.question == "What does the small text in the bottom left part of the image say?"
    assert task.answer == "GATE 14" and task.position == "bottom left"
    assert task.gt_boxes == [(400, 3400, 600, 3460)]
    assert task.question_type == "text" and task.source == "ocr-synthesis"


def test_ambiguous_large_unsure_and_repeated_text_makes_no_question():
    hits = [
        TextHit((100, 100, 200, 130), "CAFE", 0.99), TextHit((400, 200, 500, 230), "BAR", 0.99),  # same cell
        TextHit((1200, 100, 1800, 600), "HUGE SIGN", 0.99),  # not small relative to the image
        TextHit((2200, 100, 2300, 130), "EXIT 9", 0.6),  # unsure reading
        TextHit((100, 800, 200, 830), "TAXI", 0.99), TextHit((2200, 1700, 2300, 1730), "TAXI", 0.99),  # repeated
        TextHit((990, 900, 1030, 930), "EDGE", 0.99),  # centre on a grid line
    ]
    assert _tasks(hits) == []


def test_stray_symbols_do_not_block_a_cell():
    hits = [TextHit((200, 1700, 300, 1730), "GATE 14", 0.97), TextHit((700, 1500, 720, 1520), "三", 0.91)]
    assert [t.answer for t in _tasks(hits)] == ["GATE 14"]


def test_ground_truth_is_the_tight_crop_reading_when_a_second_reading_agrees_else_the_question_is_dropped():
    readings = {(64, 0.9): {"GATE85": "GATE 85", "WEST23": "WEST 23"}, (44, 1.2): {"GATE85": "GATE 85", "WEST23": "WEST23"}}
    seen = []

    def read_again(hit, height, unclip):
        seen.append((hit.text, height, unclip))
        return _reading(readings[(height, unclip)][hit.text])

    hits = [TextHit((200, 1700, 300, 1730), "GATE85", 0.97), TextHit((2200, 100, 2300, 130), "WEST23", 0.98)]
    tasks, rejected = _synthesize(hits, read_again, gaps=lambda hit: [Gap(45, hit.text == "GATE85")],
                                  second={"GATE85": "GATE 85", "WEST23": "WEST23"})
    assert [(t.answer, t.position) for t in tasks] == [("GATE 85", "bottom left")]
    assert rejected == [RejectedTask(  # RapidOCR's rereads part and Tesseract does not; the pixels cannot tell
        object="WEST23", box=(4400, 200, 4600, 260),
        question="What does the small text in the top right part of the image say?",
        reason="spaces disagree: 'WEST 23' (RapidOCR) vs 'WEST23' (Tesseract), its pixels 0 to 1 word gap(s)")]
    assert seen == [("GATE85", 64, 0.9), ("GATE85", 44, 1.2), ("WEST23", 64, 0.9), ("WEST23", 44, 1.2)]


@pytest.mark.parametrize("rapid, whole, second, gaps, answer", [
    # a space inside what both engines read as one word (PP-OCR's whole-image box, Tesseract) is not written
    ("MU SEUM", "MUSEUM", "MUSEUM", {2}, "MUSEUM"),
    # nor one that splits a single letter off a word the second reader reads whole
    ("NO PARKIN G", "NO PARKIN G", "NO PARKING", {2, 8}, "NO PARKING"),
    # a digit after the space, and no engine word box for it: in doubt, the task is dropped
    ("EXIT 7", "EXIT7", "EXIT7", {4}, None),
    ("EXIT7", "EXIT7", "EXIT 7", set(), None),  # the other way round, no pixel gap: in doubt too
    ("BANK Z7", "BANKZ7", "BANKZ7", {4}, None),  # a code ("Z7") is a word of its own: PP-OCR dropping its space is no evidence
    # a genuine two-word sign: both readers agree, or RapidOCR lost the space the pixels and Tesseract show
    ("BUS STOP", "BUSSTOP", "BUS STOP", {3}, "BUS STOP"),
    (None, "BUSSTOP", "BUS STOP", {3}, "BUS STOP"),
    ("ZONE A", "ZONE A", "ZONE A", {4}, "ZONE A"),  # a one-letter word both read apart stays apart
])
def test_two_readers_spacing_is_reconciled_by_the_documented_rule(rapid, whole, second, gaps, answer):
    readings = [whole, rapid or whole, rapid or whole]
    assert reconcile(rapid, second, readings, (gaps, gaps)) == answer


def test_a_task_is_kept_only_when_the_second_reader_agrees_or_the_rule_decides():
    """End to end with crafted readings: RapidOCR's spelling (rereads + pixel gaps) against Tesseract's."""
    cases = {  # whole-image reading: (both rereads' spelling, with a pixel word gap at each space; Tesseract's)
        "MUSEUM": ("MU SEUM", "MUSEUM"), "NOPARKING": ("NO PARKIN G", "NO PARKING"), "EXIT7": ("EXIT 7", "EXIT7"),
        "BUSSTOP": ("BUS STOP", "BUS STOP"), "STATIONZ4": ("STATION Z4", "STATION 24"),
    }
    hits = [TextHit((200 + 1000 * (k % 3), 100 + 800 * (k // 3), 300 + 1000 * (k % 3), 130 + 800 * (k // 3)), text, 0.97)
            for k, text in enumerate(cases)]
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: _reading(cases[hit.text][0]),
                                  gaps=lambda hit: _gaps(_reading(cases[hit.text][0])),
                                  second={text: spelling for text, (_, spelling) in cases.items()})
    assert [t.answer for t in tasks] == ["MUSEUM", "NO PARKING", "BUS STOP"]
    assert [r.reason for r in rejected] == [
        "spaces disagree: 'EXIT 7' (RapidOCR) vs 'EXIT7' (Tesseract), its pixels 1 word gap(s)",
        "readers disagree: 'STATION Z4' (RapidOCR) vs 'STATION 24' (Tesseract)"]


def test_a_piece_of_a_line_read_again_is_no_other_text_in_its_cell():
    """A tile's box of one letter inside the line's box ("M" over "MUSEUM", street seed 3001) does not make the
    cell ambiguous; another text beside the line in the same cell still does."""
    museum = TextHit((2798, 2023, 3143, 2081), "MUSEUM", 0.99)
    assert [t.answer for t in _tasks([TextHit((2795, 2018, 2873, 2084), "M", 0.99), museum])] == ["MUSEUM"]
    assert _tasks([TextHit((2795, 2090, 2873, 2150), "M", 0.99), museum]) == []  # below it: another text


def test_a_mark_only_the_rereads_read_is_not_written():
    """Both rereads read a wide letter gap as a colon ("FIR: ST AID"); the whole-image reading and Tesseract read
    no mark: the mark is left out, and the space inside "FIRST" that only RapidOCR puts is not written."""
    tasks, rejected = _synthesize([TextHit((200, 1700, 300, 1730), "FIRST AID", 0.99)],
                                  lambda hit, height, unclip: _reading("FIR: ST AID"),
                                  gaps=lambda hit: _gaps(_reading("FIR: ST AID")), second={"FIRST AID": "FIRST AID"})
    assert [t.answer for t in tasks] == ["FIRST AID"] and rejected == []


def test_words_boxed_apart_on_one_line_are_one_hit_with_their_space():
    hits = [TextHit((250, 17, 359, 87), "J5", 0.99), TextHit((21, 18, 286, 96), "TOWER", 0.98),  # boxes overlap
            TextHit((600, 20, 700, 90), "EXIT", 0.97),  # more than a line height away: another text
            TextHit((30, 300, 130, 340), "GATE", 0.95), TextHit((140, 302, 180, 338), "7", 0.9),
            TextHit((190, 300, 230, 340), "甲", 0.6)]  # a stray mark joins no line
    assert merge_lines(hits) == [
        TextHit((21, 17, 359, 96), "TOWER J5", 0.98), TextHit((600, 20, 700, 90), "EXIT", 0.97),
        TextHit((30, 300, 180, 340), "GATE 7", 0.9), TextHit((190, 300, 230, 340), "甲", 0.6)]


def test_a_reading_whose_spaces_the_pixels_do_not_show_is_dropped():
    hits = [TextHit((200, 1700, 300, 1730), "GATE85", 0.97), TextHit((2200, 100, 2300, 130), "TOWERJ5", 0.98),
            TextHit((200, 100, 400, 130), "PLATFORM 54", 0.96)]
    reread = {"PLATFORM 54": "PLATFORM5 54"}
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: _reading(reread.get(hit.text, hit.text)),
                                  gaps=lambda hit: {"GATE85": [Gap(45, True), Gap(55, False)], "TOWERJ5": None}.get(hit.text))
    assert tasks == []
    assert [r.reason for r in rejected] == [
        "spaces disagree: 'GATE85' (RapidOCR) vs 'GATE85' (Tesseract), its pixels 1 to 2 word gap(s)",
        "pixels unclear: the letters of 'TOWERJ5' cannot be told apart in its pixels, or the line goes on past its box",
        "readings disagree: 'PLATFORM5 54' (line 64 px tall) vs 'PLATFORM5 54' (44 px) vs 'PLATFORM 54' (whole image)"]


def test_the_space_goes_where_the_pixels_show_a_word_gap_and_both_readings_put_their_letters_apart():
    """Every RapidOCR reading spelled "WEST4" (PP-OCR drops spaces), or both put the space before the wrong letter:
    the pixels' certain gap, placed between the letters the rereads locate on each side of it, decides, and
    Tesseract agrees."""
    hits = [TextHit((200, 1700, 300, 1730), "WEST4", 0.97), TextHit((2200, 100, 2400, 130), "PLATFORM54", 0.98),
            TextHit((200, 100, 300, 130), "BANKZ7", 0.96)]
    reread = {(64, "WEST4"): "WEST4", (64, "PLATFORM54"): "PLATFORM5 4", (64, "BANKZ7"): "BANKZ7",
              (44, "WEST4"): "WEST4", (44, "PLATFORM54"): "PLATFORM5 4", (44, "BANKZ7"): "B ANKZ7"}
    gaps = {"WEST4": [Gap(42, True)], "PLATFORM54": [Gap(82, True)], "BANKZ7": [Gap(42, True)]}
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: _reading(reread[height, hit.text]),
                                  gaps=lambda hit: gaps[hit.text],
                                  second={"WEST4": "WEST 4", "PLATFORM54": "PLATFORM 54", "BANKZ7": "BANK Z7"})
    # "BANKZ7": the 44-px reread puts the gap elsewhere ("BAN KZ7"), so RapidOCR leaves the spaces open; Tesseract's
    # "BANK Z7" has its space where a certain gap is, and the other places are inside what PP-OCR read as one word
    assert [t.answer for t in tasks] == ["WEST 4", "PLATFORM 54", "BANK Z7"] and rejected == []


def test_rereads_without_letter_positions_keep_no_answer_the_pixels_contradict():
    hits = [TextHit((200, 1700, 300, 1730), "WEST4", 0.97)]
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: TextHit((0, 0, 50, 30), "WEST4", 0.99),
                                  gaps=lambda hit: [Gap(42, True)])
    assert tasks == [] and [r.reason for r in rejected] == [
        "spaces disagree: 'WEST4' (RapidOCR) vs 'WEST4' (Tesseract), its pixels 1 word gap(s)"]


def test_overlapping_reread_boxes_keep_each_letter_once():
    """Tight boxes of a reread overlap ("S", "STA", "ATION", "Z4"): a letter the box before already holds at
    about the same x is dropped, so the line's letters are the sign's (its spaces come from the pixels)."""
    def hit(x1, x2, letters):
        return TextHit((x1, 18, x2, 80), "".join(c for c, _ in letters), 0.99, tuple(letters))
    hits = [hit(22, 70, [("S", 46)]), hit(48, 164, [("S", 58), ("T", 84), ("A", 136)]),
            hit(138, 355, [("A", 150), ("T", 183), ("I", 221), ("O", 254), ("N", 313)]),
            hit(356, 450, [("Z", 381), ("4", 421)]), hit(460, 480, [("S", 470)])]
    line, = merge_lines(hits)
    assert line.text == "S TA TION Z4 S" and line.box == (22, 18, 480, 80)
    assert "".join(c for c, _ in line.letters) == "STATIONZ4S"


def _line(text: str, size: int = 40, blur: float = 0) -> tuple[Image.Image, tuple]:
    """A dark line on a light plate, and its box as OCR draws it: the ink and a third of its height around."""
    image = Image.new("RGB", (600, 120), (236, 232, 220))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    x1, y1, x2, y2 = draw.textbbox((40, 40), text, font=font)
    margin = (y2 - y1) // 3
    draw.line((0, y1 - margin + 2, 600, y1 - margin + 2), fill=(70, 70, 75), width=3)  # the plate's edge
    draw.text((40, 40), text, fill=(25, 25, 30), font=font)
    image = image.filter(ImageFilter.GaussianBlur(blur)) if blur else image
    return image, (x1 - margin, y1 - margin, x2 + margin, y2 + margin)


def _counted(gaps):
    return None if gaps is None else (sum(gap.certain for gap in gaps), len(gaps))


def test_word_gaps_counts_the_spaces_the_pixels_show_and_none_when_letters_merge():
    assert _counted(word_gaps(*_line("GATE 85"))) == (1, 1)
    assert _counted(word_gaps(*_line("GATE85"))) == (0, 0)
    assert _counted(word_gaps(*_line("AISLE F9 EAST"))) == (2, 2)
    assert _counted(word_gaps(*_line("BUS 12"))) == (0, 1)  # the blank sides of a "1" look like word gaps
    assert _counted(word_gaps(*_line("TRACK 11"))) == (0, 2)
    assert word_gaps(*_line("TOWER J5", blur=6)) is None
    assert word_gaps(Image.new("RGB", (100, 40), (200, 200, 200)), (0, 0, 100, 40)) is None  # no contrast
    image, (x1, y1, x2, y2) = _line("ZONE Z3")
    font = ImageFont.load_default(size=40)
    assert _counted(word_gaps(image, (x1, y1, x2, y2))) == (1, 1)
    part = (40 + round(font.getlength("ZONE ")) - 6, y1, x2, y2)  # OCR boxed only "Z3": the line goes on
    assert word_gaps(image, part) is None


def _spaced(text: str, track: float = 0.16, size: int = 40) -> tuple[Image.Image, list[tuple[int, int]]]:
    """`text` in light DejaVu Sans Mono on a red plate, `track` of the font size between letters (the street
    scenes' widest), and where each of its words starts and ends (x of its first and last letter's ink)."""
    font = _street_font("DejaVuSansMono.ttf")(size)
    image = Image.new("RGB", (60 + round(len(text) * size * (0.9 + track)), 120), (160, 30, 35))
    draw = ImageDraw.Draw(image)
    x, words = 40.0, []
    for k, char in enumerate(text):
        if char != " ":
            draw.text((x, 40), char, font=font, fill=(245, 240, 235))
            left, _, right, _ = draw.textbbox((x, 40), char, font=font)
            words += [(round(left), 0)] if k == 0 or text[k - 1] == " " else []
            words[-1] = (words[-1][0], round(right))
        x += font.getlength(char) + track * size
    return image, words


def test_word_gaps_sees_a_line_that_goes_on_past_its_box_by_the_lines_own_word_spacing():
    """PP-OCR boxed "OLD TOWN" of a widely spaced "OLD TOWN Z5" (street seed 3001), and the second reader, reading
    the same box, agreed: the code lies farther past the box than a fixed 0.6 ink heights, but within the line's
    own word spacing, so the line is not taken as whole. A line that ends there is, and so is one with a
    letter-sized blot past it that is not level with its letters."""
    image, words = _spaced("OLD TOWN Z5")
    top, bottom = 40 + 8, 40 + 38  # the font's capitals at 40 px: 30 px of ink
    end = words[1][1] + 8  # PP-OCR's box ends a quarter of the ink height past the last letter
    assert words[2][0] - end > 0.6 * 30  # the code starts farther past the box than the old rule looked
    assert word_gaps(image, (30, top - 10, end, bottom + 10)) is None
    assert word_gaps(image, (30, top - 10, words[2][1] + 8, bottom + 10)) is not None
    whole, words = _spaced("OLD TOWN")
    box = (30, top - 10, words[1][1] + 8, bottom + 20)
    assert word_gaps(whole, box) is not None
    blot = (words[1][1] + 30, bottom - 12, words[1][1] + 50, bottom + 16)  # letter-sized, half a line low
    ImageDraw.Draw(whole).rectangle(blot, fill=(245, 240, 235))
    assert word_gaps(whole, box) is not None


def test_word_gaps_sees_the_space_of_a_small_sign_whose_tilted_edge_crosses_the_box():
    """A 14-px "WEST 4" on a plate turned 1.8 degrees, boxed with its border as OCR boxes it: the edges run
    through the box's columns, yet the gap between "T" and "4" is found, at its place."""
    font = ImageFont.load_default(size=19)
    for text, spaces in (("WEST 4", [1.0]), ("BANK Z7", [1.0]), ("WEST4", [])):
        plate = Image.new("RGB", (110, 34), (240, 240, 230))
        draw = ImageDraw.Draw(plate)
        draw.rectangle((0, 0, 109, 33), outline=(70, 70, 75), width=2)
        draw.text((10, 9), text, fill=(20, 40, 90), font=font)
        image = Image.new("RGB", (200, 80), (120, 100, 90))
        image.paste(plate.rotate(-1.8, resample=Image.BICUBIC, expand=True, fillcolor=(120, 100, 90)), (40, 20))
        gaps = word_gaps(image, (42, 20, 154, 58))
        assert [gap.certain for gap in gaps] == [True] * len(spaces)
        left, _, right, _ = draw.textbbox((10, 9), text, font=font)
        word = draw.textbbox((10, 9), text.split()[0], font=font)[2]
        assert all(40 + word < gap.x < 40 + word + font.getlength(" ") + 4 for gap in gaps)


@pytest.fixture(scope="module")
def demo_scenes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    generate_scenes(folder, count=6, seed=0)  # the scenes `make demo` makes
    return folder, json.loads((folder / "scenes.json").read_text())["scenes"]


@pytest.mark.parametrize("inverted", [False, True], ids=["dark on light", "light on dark"])
def test_the_demo_scenes_ground_truth_is_each_signs_text_exactly_spaces_included(demo_scenes, inverted):
    """Each sign of the demo scenes, read as the default reads it (the 1536-px tile around it at truth size, the
    two rereads, the word gaps): a kept answer is the generator's text exactly, e.g. "WEST 4" and "BANK Z7",
    which every reading spells without their space. The same holds with the scenes' colours inverted (light
    letters on dark plates), where dark-only letter finding once gave "B O OKS5"."""
    folder, scenes = demo_scenes
    config = load_config(DEFAULT_CONFIG)
    engine = OcrEngine(threads=1)
    kept, dropped = {}, {}
    for scene in scenes:
        image = Image.open(folder / scene["file"]).convert("RGB")
        image = ImageOps.invert(image) if inverted else image
        size = truth_size(*image.size, config.images.truth_max_pixels)
        image = image.resize(size, Image.LANCZOS) if image.size != size else image
        k = size[0] / scene["width"]
        for sign in scene["signs"]:
            x1, y1, x2, y2 = (round(v * k) for v in sign["box"])
            left, top = max(0, min((x1 + x2) // 2 - 768, size[0] - 1536)), max(0, min((y1 + y2) // 2 - 768, size[1] - 1536))
            hits = [TextHit((h.box[0] + left, h.box[1] + top, h.box[2] + left, h.box[3] + top), h.text, h.score)
                    for h in engine.read(image.crop((left, top, left + 1536, top + 1536)))]
            hits = [h for h in hits if x1 <= (h.box[0] + h.box[2]) / 2 <= x2 and y1 <= (h.box[1] + h.box[3]) / 2 <= y2]
            tasks, rejected = synthesize_text_tasks(
                hits, size, (scene["width"], scene["height"]), scene["file"], "sha", PROMPTS, config.tasks,
                lambda hit, line_height, unclip: engine.reread(image, hit.box, line_height, unclip),
                lambda hit: word_gaps(image, hit.box), lambda hit: engine.read_line(image, hit.box))
            kept.update({sign["text"]: t.answer for t in tasks})
            dropped.update({sign["text"]: r.reason for r in rejected})
    assert all(answer == text for text, answer in kept.items()), kept
    assert {"WEST 4", "BANK Z7", "BANK 64", "FERRY 84"} <= set(kept), dropped
    assert len(kept) >= 16, dropped


def test_a_line_one_reread_cuts_short_is_decided_by_the_whole_image_reading_the_other_reread_and_tesseract():
    """The 44-px reread lost "LL 3" (the street family's "CITY HALL 3"): the 64-px one has the whole-image reading's
    letters, so RapidOCR leaves the spaces open; Tesseract's "CITY HALL 3" keeps the spaces PP-OCR's own word boxes
    also have, and drops the one inside "HALL"."""
    rereads = {64: "CITY HA LL 3", 44: "CITY HA"}
    tasks, rejected = _synthesize([TextHit((200, 1700, 300, 1730), "CITY HALL 3", 0.97)],
                                  lambda hit, height, unclip: _reading(rereads[height]),
                                  gaps=lambda hit: _gaps(_reading(rereads[64])), second={"CITY HALL 3": "CITY HALL 3"})
    assert [t.answer for t in tasks] == ["CITY HALL 3"] and rejected == []
    tasks, rejected = _synthesize([TextHit((200, 1700, 300, 1730), "CITY HALL 3", 0.97)],
                                  lambda hit, height, unclip: _reading(rereads[height]),
                                  gaps=lambda hit: _gaps(_reading(rereads[64])), second={"CITY HALL 3": "CITY HAL 3"})
    assert tasks == [] and [r.reason for r in rejected] == [
        "readers disagree: 'CITY HA LL 3' (RapidOCR) vs 'CITY HAL 3' (Tesseract)"]


def test_the_second_readers_reading_that_spells_the_line_as_rapidocr_does_is_the_one_compared():
    """Tesseract reads each line at several margins and sizes: one of them spelling "GATE 85" as RapidOCR does
    is agreement, though an earlier one dropped the space; with no such reading the first is compared."""
    hit = TextHit((200, 1700, 300, 1730), "GATE85", 0.97)
    for readings, answer in ((["GATE85", "GATE 85"], "GATE 85"), (["GATE85", "GATE 8S"], None)):
        tasks, rejected = synthesize_text_tasks(
            [hit], (3000, 2000), (6000, 4000), "a.jpg", "sha", PROMPTS, TextTasksConfig(),
            lambda hit, height, unclip: _reading("GATE 85"), lambda hit: _gaps(_reading("GATE 85")),
            lambda hit: readings)
        assert [t.answer for t in tasks] == ([answer] if answer else [])
    assert [r.reason for r in rejected] == [
        "spaces disagree: 'GATE 85' (RapidOCR) vs 'GATE85' (Tesseract), its pixels 1 word gap(s)"]
