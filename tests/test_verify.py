"""answers.py: the rules of an answer against the ground truth."""

from mmcof_gen.answers import normalize_text, verify_answer


def test_verifier_normalises_case_spaces_and_punctuation():
    assert normalize_text("Gate 14-B.") == "gate14b"
    assert verify_answer("GATE 14B", "gate 14-b").correct
    wrong = verify_answer("GATE 41B", "GATE 14B")
    assert not wrong.correct and wrong.reason == "read 'GATE 41B', expected 'GATE 14B'"
    assert verify_answer(None, "X").reason == "no answer"
