"""Scripted choosers for the `choose` action space (agent/candidates.py), as ScriptedServer scripts.

Each reads what a real chooser gets: the request's reply schema (the allowed actions and candidate numbers)
and the numbered candidate list in its last message. None of them knows where the answer is.
"""

from __future__ import annotations

import json
import random
import re

from mmcof_gen.positions import NAMES
from tests.support.scripted_server import Reply

POSITIONS = sorted((name for row in NAMES for name in row), key=len, reverse=True)


def options(body: dict) -> dict[str, list]:
    """action -> its allowed values (candidate numbers, answers; [] for a free phrase), from the reply schema."""
    form = body["response_format"]
    schema = form["json_schema"]["schema"] if "json_schema" in form else form["schema"]
    allowed = {}
    for variant in schema["anyOf"]:
        action = variant["properties"]["action"]["const"]
        argument = next(v for k, v in variant["properties"].items() if k != "action")
        allowed[action] = argument.get("enum", [])
    return allowed


def listed(body: dict) -> dict[int, str]:
    """The candidates of the last message: number -> description."""
    text = body["messages"][-1]["content"]
    return {int(n): d for n, d in re.findall(r"^(\d+)\. (.+)$", text.split("Candidates:")[-1], re.M)}


def question_position(body: dict) -> str | None:
    question = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return next((p for p in POSITIONS if p in question.splitlines()[0]), None)


def reply(choice: dict) -> Reply:
    return Reply(json.dumps(choice))


def reading_chooser(body: dict) -> Reply:
    """Reads the text line the question points to (its place in words), else zooms into the region there."""
    allowed, candidates, position = options(body), listed(body), question_position(body)
    here = {n: d for n, d in candidates.items() if position and (f", {position} of the image" in d
                                                                  or f"the {position} ninth" in d)}
    for action, kind in (("read", "text line"), ("zoom", "region"), ("read", "region")):
        for number, described in here.items():
            if described.startswith(kind) and number in allowed.get(action, []):
                return reply({"action": action, "candidate": number})
    return reply({"action": "locate", "phrase": "text"})


def far_chooser(body: dict) -> Reply:
    """Unhelpful: reads the allowed candidate listed last that is NOT where the question points."""
    allowed, candidates, position = options(body), listed(body), question_position(body)
    away = [n for n, d in candidates.items() if n in allowed.get("read", []) and position not in d]
    return reply({"action": "read", "candidate": away[-1]} if away else {"action": "locate", "phrase": "car"})


def invalid_chooser(body: dict) -> Reply:
    """Invalid: always a candidate number that does not exist."""
    return reply({"action": "read", "candidate": 999})


def random_chooser(seed: int):
    """Uniform over the allowed actions, then over that action's candidates (a locate names 'text')."""
    rng = random.Random(seed)

    def choose(body: dict) -> Reply:
        allowed = {a: v for a, v in options(body).items() if v or a == "locate"}
        action = rng.choice(sorted(allowed))
        if action == "locate":
            return reply({"action": "locate", "phrase": "text"})
        key = "answer" if action == "answer" else "candidate"
        return reply({"action": action, key: rng.choice(allowed[action])})
    return choose
