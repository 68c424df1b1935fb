"""The rules of an answer: a short text answer normalised, checked against the ground truth, and a
multiple-choice reply read as its option.

A foundation (stdlib and schema only): the OCR engine, task synthesis, the agents, eval's scoring and the
demo scenes all judge answers by these same rules.
"""

from __future__ import annotations

import re
import unicodedata

from mmcof_gen.schema import Verdict


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
