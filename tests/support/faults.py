"""Fault injection for the reliability suite (tests/reliability): a scripted VLM that really looks at the
pixels it is sent, a wrapper that makes a share of its replies fail in mixed ways, and the checks a run
folder must pass after any crash.

The scripted VLM finds a red sign by its pixels: the reader answers "red" only when red fills a good
part of the image it is shown (a zoomed crop, not the whole frame), the locator returns the red pixels'
bounding box, and the planner locates, zooms, then reads. So the real agent makes real zoom chains
against it, over real HTTP, with no model cost.

    with ScriptedServer(faulty(sign_reader_vlm, rate=0.3, seed=0)) as server: ...
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mmcof_gen.store import RunStore
from mmcof_gen.stats import run_stats
from tests.support.scripted_server import Reply, planner_steps

SIGN_COLOUR = (220, 20, 20)


# ------------------------------------------------------------------------------------------ inputs


def write_sign_image(path: Path, size: tuple[int, int], sign: tuple[int, int, int, int], seed: int) -> Path:
    """A PNG of a smooth grey gradient (no red anywhere) with a red sign at `sign` (original pixels)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    low, high = rng.integers(60, 200, 2)
    ramp = np.linspace(low, high, width, dtype=np.float32)[None, :].repeat(height, axis=0)
    pixels = np.stack([ramp] * 3, axis=-1).astype(np.uint8)
    x1, y1, x2, y2 = sign
    pixels[y1:y2, x1:x2] = SIGN_COLOUR
    Image.fromarray(pixels).save(path)
    return path


SIGNS = [(100, 300, 140, 330), (160, 260, 200, 290), (220, 220, 260, 250), (280, 180, 320, 210)]
CLI = [sys.executable, "-m", "mmcof_gen.cli"]


def write_sign_inputs(folder: Path, count: int = 4, both_questions: bool = True) -> tuple[Path, Path]:
    """`folder/images` with `count` 640x480 sign images and `folder/questions.jsonl` asking, per image, a
    question the scripted VLM answers after a zoom ("red": accepted) and one it cannot ("blue": rejected) —
    or just one of them, alternating, so that no two searches send the same request — plus a line naming a
    missing image (an error record)."""
    images = folder / "images"
    asked = [("What colour is the small sign?", "red"), ("Is the sign blue or red?", "blue")]
    lines = []
    for index in range(count):
        sign = SIGNS[index % len(SIGNS)]
        name = f"sign{index}.png"
        write_sign_image(images / name, (640, 480), sign, seed=index)
        for question, answer in asked if both_questions else [asked[index % 2]]:
            lines.append({"image": name, "question": question, "answer": answer,
                          **({"bbox": list(sign)} if answer == "red" else {})})
    lines.append({"image": "missing.png", "question": "Where is it?", "answer": "here"})
    questions = folder / "questions.jsonl"
    questions.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return images, questions


def run_cli(*args, env: dict | None = None, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`mmcof-gen ARGS` in a child process, as a user runs it; `env` is added to this process's environment."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, **(env or {})})


def vlm_config_yaml(path: Path, base_url: str, *, max_retries: int = 2, timeout: float = 5.0,
                    max_backoff_seconds: float = 2.0, api_key_env: str | None = None, resolutions=(448,),
                    **agent) -> Path:
    """A pipeline YAML with the VLM agent and every role on `base_url` (prompts: the shipped agent prompts)."""
    model = {"backend": "openai", "base_url": base_url, "model": "scripted-vlm", "backoff_seconds": 0.01,
             "max_backoff_seconds": max_backoff_seconds, "max_retries": max_retries, "timeout": timeout}
    if api_key_env:
        model["api_key_env"] = api_key_env
    config = {"name": "reliability", "resolutions": list(resolutions),
              "agent": {"kind": "vlm", "max_steps": 4, **agent}, "models": {"planner": model}}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ the scripted VLM


def request_images(body: dict) -> list[Image.Image]:
    """The images of a chat-completions request, in message order."""
    parts = [p for m in body.get("messages", []) if isinstance(m.get("content"), list) for p in m["content"]]
    return [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
            for p in parts if p.get("type") == "image_url"]


def _red(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image, dtype=np.int16)
    return (pixels[..., 0] > 150) & (pixels[..., 1] < 100) & (pixels[..., 2] < 100)


def red_box(image: Image.Image) -> list[int] | None:
    """The bounding box [x1, y1, x2, y2] of the red pixels, or None when there are none."""
    ys, xs = np.nonzero(_red(image))
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1] if len(xs) else None


def _around(box: list[int], image: Image.Image) -> list[int]:
    """`box` twice as large about its centre, inside the image."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    return [max(0, x1 - w // 2), max(0, y1 - h // 2), min(image.width, x2 + w // 2), min(image.height, y2 + h // 2)]


def sign_reader_vlm(body: dict, bad_boxes: tuple = ()) -> Reply:
    """Replies of every role, chosen by the JSON schema the request names (see the module docstring).

    `bad_boxes` (NaN, negative, huge...) are what a broken model emits: the locator returns them before the
    real box, and the planner zooms on each of them before it zooms on the sign and reads it.
    """
    name = body.get("response_format", {}).get("json_schema", {}).get("name")
    if name is None:  # a request cut short by a killed client
        return Reply(status=400)
    images = request_images(body)
    if name == "ReaderReply":
        return Reply(json.dumps({"answer": "red" if _red(images[-1]).mean() > 0.15 else "grey"}))
    if name == "Targets":
        return Reply('{"missing": ["the red sign"]}')
    box = red_box(images[0])
    if name == "LocateReply":
        return Reply(json.dumps({"boxes": [*bad_boxes, box] if box else list(bad_boxes)}))
    plan = [{"action": "locate", "phrase": "the red sign"}, *({"action": "zoom", "box": bad} for bad in bad_boxes)]
    if box is not None:
        plan += [{"action": "zoom", "box": _around(box, images[0])}, {"action": "read", "box": box}]
    steps = planner_steps(body)
    action = plan[steps] if steps < len(plan) else {"action": "answer", "answer": "red"}
    return Reply(json.dumps({"thought": "Next.", **action}))


# ------------------------------------------------------------------------------------------ faults


FAULTS = ("429", "500", "503", "timeout", "reset", "truncated", "invalid_json", "wrong_schema")


@dataclass
class Injected:
    kind: str
    key: str       # sha256 of the request body: a retry sends the same body
    time: float    # time.monotonic() when the request arrived


@dataclass
class FaultyScript:
    """Wraps a script: each request fails with probability `rate`, in one of `kinds`, decided by a RNG seeded
    with (seed, body, attempt), so the same requests fail the same way whatever order they arrive in.

    `retry_after` is the Retry-After of a 429; `stall` how long a timeout fault holds the reply back (more
    than the client's timeout). `arrivals` holds (key, time, fault or None) for every request.
    """

    script: object
    rate: float = 0.3
    seed: int = 0
    kinds: tuple[str, ...] = FAULTS
    retry_after: float = 0.5
    stall: float = 2.0
    arrivals: list[tuple[str, float, str | None]] = field(default_factory=list)
    _attempts: Counter = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, body: dict) -> Reply:
        key = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        with self._lock:
            attempt = self._attempts[key]
            self._attempts[key] += 1
        rng = random.Random(f"{self.seed}:{key}:{attempt}")
        kind = rng.choice(self.kinds) if rng.random() < self.rate else None
        self.arrivals.append((key, time.monotonic(), kind))
        if kind is None:
            return self.script(body)
        if kind == "429":
            return Reply(status=429, headers={"Retry-After": f"{self.retry_after:g}"})
        if kind in ("500", "503"):
            return Reply(status=int(kind))
        if kind == "timeout":
            reply = self.script(body)
            reply.delay = self.stall
            return reply
        if kind == "reset":
            return Reply(drop=True)
        if kind == "truncated":
            reply = self.script(body)
            reply.truncate = True
            return reply
        if kind == "invalid_json":
            return Reply(body=b'{"id": "chatcmpl-1", "choices": [{"message": ')
        return Reply(body=b'{"object": "list", "data": [{"id": "not-a-completion"}]}')  # wrong_schema

    def injected(self) -> Counter:
        return Counter(kind for _, _, kind in self.arrivals if kind)


# ------------------------------------------------------------------------------------------ checks


def jsonl_lines(root: Path) -> dict[Path, list[dict]]:
    """Every line of every `*.jsonl` under `root`, parsed (a torn or corrupt line raises, naming it)."""
    parsed = {}
    for path in sorted(Path(root).rglob("*.jsonl")):
        parsed[path] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(keepends=True), 1):
            assert line.endswith("\n"), f"{path}:{number} is a torn line (no newline)"
            parsed[path].append(json.loads(line))
    return parsed


def assert_run_whole(run: Path) -> RunStore:
    """The run folder after a crash and a resume: no torn line, each id once, manifest counts == records."""
    jsonl_lines(run)
    store = RunStore(run)
    ids = [t.id for t in store.trajectories()] + [e.id for e in store.errors()]
    assert len(ids) == len(set(ids)), [i for i, n in Counter(ids).items() if n > 1]
    images = [i.image for i in store.image_tasks()]
    assert len(images) == len(set(images)), images
    assert store.manifest().counts == run_stats(store)
    return store


def decisions(run: Path) -> dict[str, tuple]:
    """What a run decided, per id: (status, reason, chain boxes); an error record is ("error", reason, [])."""
    store = RunStore(run)
    decided = {t.id: (t.status, t.reason, [list(s.box) for s in t.chain]) for t in store.trajectories()}
    decided.update({e.id: ("error", e.reason, []) for e in store.errors()})
    return decided
