"""Scoring a benchmark answer: rules first (option letter, option text, normalised match), then an
optional LLM judge for what the rules cannot decide.

Multiple choice accepts what CoF-style models write: `B`, `(B)`, `B.`, `B)`, `(B) the text`, `B. the text`,
or the option text itself (`answers.as_option`, shared with the synthesis verifier). A reply that
names no option and matches nothing is left to the judge; without a judge it is wrong.

    score_by_rules("(B) blue", ["red", "blue"], "blue")   # Score(correct=True, method="option")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel

from mmcof_gen import cof_format
from mmcof_gen.answers import as_option, normalize_text
from mmcof_gen.models.chat import ChatMessage, ChatModel, ReplyError, complete_json
from mmcof_gen.prompts import Prompts
from mmcof_gen.tasks.vstar import BenchItem

_LETTER_THEN_TEXT = re.compile(r"\(?([A-Z])[.:)]\s+\S.*", re.DOTALL)  # "(B) blue", "B. blue"


@dataclass
class Score:
    correct: bool
    method: str  # option | match | judge | no_answer | unmatched | judge_error


def score_by_rules(predicted: str | None, options: list[str] | None, expected: str) -> Score | None:
    """A score when the rules decide, None when only a judge can (`expected` is the option text for MC)."""
    if not predicted or not predicted.strip():
        return Score(False, "no_answer")
    if options:
        with_text = _LETTER_THEN_TEXT.fullmatch(predicted.strip())
        chosen = as_option(with_text.group(1) if with_text else predicted, options)
        return Score(chosen == expected, "option") if chosen in options else None
    if normalize_text(predicted) == normalize_text(expected):
        return Score(True, "match")
    return None


class JudgeVerdict(BaseModel):
    correct: bool


async def score_answer(item: BenchItem, predicted: str | None, judge: ChatModel | None, prompts: Prompts) -> Score:
    """Rules first; what they cannot decide goes to the judge (a JSON verdict) when there is one, else wrong."""
    decided = score_by_rules(predicted, item.options, item.answer)
    if decided is not None:
        return decided
    if judge is None:
        return Score(False, "unmatched")
    if item.options:
        question = cof_format.question_text(item.question, item.options).removeprefix("Question: ")
        reference = f"({item.answer_letter}) {item.answer}"
    else:
        question, reference = item.question, item.answer
    prompt = prompts.render("judge", question=question, expected=reference, predicted=predicted)
    try:
        verdict, _ = await complete_json(judge, [ChatMessage("user", prompt)], JudgeVerdict, max_tokens=64)
    except ReplyError:
        return Score(False, "judge_error")
    return Score(verdict.correct, "judge")
