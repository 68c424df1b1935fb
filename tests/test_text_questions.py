from PIL import Image, ImageDraw, ImageFilter, ImageFont

from mmcof_gen.config import DEFAULT_CONFIG, TextTasksConfig, load_config
from mmcof_gen.models.ocr import TextHit, merge_lines
from mmcof_gen.schema import RejectedTask
from mmcof_gen.tasks.synthesis import task_prompts
from mmcof_gen.tasks.text_questions import synthesize_text_tasks, word_gaps

PROMPTS = task_prompts(load_config(DEFAULT_CONFIG))


def _synthesize(hits, read_again, size=(3000, 2000), original=(6000, 4000), gaps=lambda hit: (hit.text.count(" "),) * 2):
    return synthesize_text_tasks(hits, size, original, "a.jpg", "sha", PROMPTS, TextTasksConfig(), read_again, gaps)


def _tasks(hits, size=(3000, 2000), original=(6000, 4000)):
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: hit.text, size, original)
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
        return readings[(height, unclip)][hit.text]

    hits = [TextHit((200, 1700, 300, 1730), "GATE85", 0.97), TextHit((2200, 100, 2300, 130), "WEST23", 0.98)]
    tasks, rejected = _synthesize(hits, read_again, gaps=lambda hit: (1, 1))
    assert [(t.answer, t.position) for t in tasks] == [("GATE 85", "bottom left")]
    assert rejected == [RejectedTask(
        object="WEST23", box=(4400, 200, 4600, 260),
        question="What does the small text in the top right part of the image say?",
        reason="readings disagree: 'WEST 23' (line 64 px tall) vs 'WEST23' (44 px)")]
    assert seen == [("GATE85", 64, 0.9), ("GATE85", 44, 1.2), ("WEST23", 64, 0.9), ("WEST23", 44, 1.2)]


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
    tasks, rejected = _synthesize(hits, lambda hit, height, unclip: {"PLATFORM 54": "PLATFORM5 54"}.get(hit.text, hit.text),
                                  gaps=lambda hit: {"GATE85": (1, 2), "TOWERJ5": None}.get(hit.text, (1, 1)))
    assert tasks == []
    assert [r.reason for r in rejected] == [
        "readings disagree: 'GATE85' has 0 space(s), its pixels 1 to 2 word gap(s)",
        "readings disagree: the letters of 'TOWERJ5' cannot be told apart in its pixels",
        "readings disagree: 'PLATFORM5 54' (line 64 and 44 px tall) vs 'PLATFORM 54' (whole image)"]


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


def test_word_gaps_counts_the_spaces_the_pixels_show_and_none_when_letters_merge():
    assert word_gaps(*_line("GATE 85")) == (1, 1)
    assert word_gaps(*_line("GATE85")) == (0, 0)
    assert word_gaps(*_line("AISLE F9 EAST")) == (2, 2)
    assert word_gaps(*_line("BUS 12")) == (0, 1)  # the blank sides of a "1" look like word gaps
    assert word_gaps(*_line("TRACK 11")) == (0, 2)
    assert word_gaps(*_line("TOWER J5", blur=6)) is None
    assert word_gaps(Image.new("RGB", (100, 40), (200, 200, 200)), (0, 0, 100, 40)) is None  # no contrast
