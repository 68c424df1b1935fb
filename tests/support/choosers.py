"""Scripted choosers for the `choose` action space (agent/candidates.py), as ScriptedServer scripts.

Each reads what a real chooser gets: the request's reply schema (the allowed actions, places and candidate
numbers) and the numbered candidate list in its last message. None of them knows where the answer is. A read
or a zoom is replied with the candidate's place before its number, as the schema asks (`pick`).
"""

from __future__ import annotations

import json
import random
import re

from mmcof_gen.positions import NAMES
from tests.support.scripted_server import Reply

POSITIONS = sorted((name for row in NAMES for name in row), key=len, reverse=True)


def variants(body: dict) -> list[dict]:
    """The properties of each object the reply schema allows."""
    form = body["response_format"]
    schema = form["json_schema"]["schema"] if "json_schema" in form else form["schema"]
    return [variant["properties"] for variant in schema["anyOf"]]


def options(body: dict) -> dict[str, list]:
    """action -> its allowed values (candidate numbers over every place, in order; answers; [] for a free
    phrase), from the reply schema."""
    allowed = {}
    for properties in variants(body):
        argument = next(v for k, v in properties.items() if k not in ("place", "action"))
        allowed.setdefault(properties["action"]["const"], []).extend(argument.get("enum", []))
    return {action: sorted(values) if action in ("read", "zoom") else values for action, values in allowed.items()}


def pick(body: dict, action: str, number: int) -> Reply:
    """A read or zoom of candidate `number`, its place before it, as the schema of this step gives it."""
    place = next(p["place"]["const"] for p in variants(body)
                 if p["action"]["const"] == action and number in p["candidate"]["enum"])
    return reply({"action": action, "place": place, "candidate": number})


def listed(body: dict) -> dict[int, str]:
    """The candidates of the last message: number -> description."""
    text = body["messages"][-1]["content"]
    return {int(n): d for n, d in re.findall(r"^(\d+)\. (.+)$", text.split("Candidates:")[-1], re.M)}


def question_position(body: dict) -> str | None:
    first = next(m["content"] for m in body["messages"] if m["role"] == "user")
    question = next(line for line in first.splitlines() if line.startswith("Question: "))
    return next((p for p in POSITIONS if p in question), None)


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
                return pick(body, action, number)
    return reply({"action": "locate", "phrase": "text"})


def far_chooser(body: dict) -> Reply:
    """Unhelpful: reads the allowed candidate listed last that is NOT where the question points."""
    allowed, candidates, position = options(body), listed(body), question_position(body)
    away = [n for n, d in candidates.items() if n in allowed.get("read", []) and position not in d]
    return pick(body, "read", away[-1]) if away else reply({"action": "locate", "phrase": "car"})


def invalid_chooser(body: dict) -> Reply:
    """Invalid: always a candidate number that does not exist."""
    return reply({"action": "read", "candidate": 999})


def random_chooser(seed: int):
    """Uniform over the allowed actions, then over that action's candidates whatever their place (a locate
    names 'text')."""
    rng = random.Random(seed)

    def choose(body: dict) -> Reply:
        allowed = {a: v for a, v in options(body).items() if v or a == "locate"}
        action = rng.choice(sorted(allowed))
        if action == "locate":
            return reply({"action": "locate", "phrase": "text"})
        if action == "answer":
            return reply({"action": action, "answer": rng.choice(allowed[action])})
        return pick(body, action, rng.choice(allowed[action]))
    return choose
