from mmcof_gen.config import DEFAULT_CONFIG, TextTasksConfig, load_config
from mmcof_gen.models.ocr import TextHit
from mmcof_gen.tasks.synthesis import task_prompts
from mmcof_gen.tasks.text_questions import synthesize_text_tasks

PROMPTS = task_prompts(load_config(DEFAULT_CONFIG))


def _tasks(hits, size=(3000, 2000), original=(6000, 4000)):
    return synthesize_text_tasks(hits, size, original, "a.jpg", "sha", PROMPTS, TextTasksConfig())


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
