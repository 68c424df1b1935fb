"""The verifier's rules: an answer against the ground truth, and a hint about a box against the target.

Open answers the rules reject can go on to an LLM judge (`models.verifier`), asked by the VLM agent
(agent/search.py).
"""

from __future__ import annotations

import re
import unicodedata

from mmcof_gen.imaging import box_area, overlap_area
from mmcof_gen.schema import Box, Verdict


def normalize_text(text: str) -> str:
    """Case, accents, spaces and punctuation do not change what a short text answer says."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^0-9a-z]", "", text.lower())


def verify_answer(predicted: str | None, expected: str | None) -> Verdict:
    if expected is None:
        return Verdict(correct=False, predicted=predicted, expected=None, reason="no ground truth to verify against")
    if not predicted:
        return Verdict(correct=False, predicted=predicted, expected=expected, reason="no answer")
    if normalize_text(predicted) == normalize_text(expected):
        return Verdict(correct=True, predicted=predicted, expected=expected, reason="matches the ground truth")
    return Verdict(correct=False, predicted=predicted, expected=expected,
                   reason=f"read {predicted!r}, expected {expected!r}")


def box_hint(box: Box, target: Box) -> str:
    """What the verifier, who knows where the target is (frame pixels), tells the planner about a box whose
    reading was wrong; it points the search without giving the answer away."""
    shared = overlap_area(box, target)
    if shared == 0:
        return "wrong object: the target is not in this box"
    if shared < 0.9 * box_area(target):
        return "enlarge the box: it cuts off part of the target"
    if box_area(target) < 0.1 * box_area(box):
        return "shrink the box: the target is only a small part of it"
    return "the box holds the target; zoom in and read it closely"


_LETTER = re.compile(r"^\(?([A-Z])[).:]?$")


def as_option(text: str | None, options: list[str] | None) -> str | None:
    """A multiple-choice reply ("B", "(B)", "b.", or an option's text) as the option's text; other text as is."""
    if text is None or not options:
        return text
    letter = _LETTER.match(text.strip().upper())
    if letter and ord(letter.group(1)) - ord("A") < len(options):
        return options[ord(letter.group(1)) - ord("A")]
    for option in options:
        if normalize_text(option) == normalize_text(text):
            return option
    return text
