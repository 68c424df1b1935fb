"""A picture with a small red sign, and scripted replies of a stand-in VLM that searches it (the agent's and
the worker's tests)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
from PIL import Image

from tests.support.scripted_server import Reply, planner_steps


def picture(seed: int = 0) -> Image.Image:
    """448x336 noise (so that every crop has distinct pixels) with a red sign at EVIDENCE."""
    pixels = np.random.default_rng(seed).integers(0, 255, (336, 448, 3), dtype=np.uint8)
    pixels[200:230, 300:340] = (220, 20, 20)
    return Image.fromarray(pixels)


def action(**fields) -> Reply:
    return Reply(json.dumps(fields))


def sent_images(body: dict) -> list[Image.Image]:
    parts = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]]
    return [Image.open(io.BytesIO(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))).convert("RGB")
            for p in parts if p["type"] == "image_url"]


def frame_box(width: int, height: int) -> list[int]:
    """The sign of the 896x672 test image, (600, 400, 680, 460), in a width x height frame."""
    sx, sy = width / 896, height / 672
    return [round(600 * sx), round(400 * sy), round(680 * sx), round(460 * sy)]


def scripted_model(fault: bool = True):
    """A stand-in VLM for the CLI run: zooms on the sign, reads it from a crop, and faults once (429) unless
    `fault` is off."""
    state = {"requests": 0}

    def answer(body: dict) -> Reply:
        state["requests"] += 1
        if state["requests"] == 1 and fault:
            return Reply(status=429, headers={"Retry-After": "0.01"})
        name = body["response_format"]["json_schema"]["name"]
        text = json.dumps(body["messages"])
        size = re.search(r"image of (\d+)x(\d+) pixels", text)
        if name == "ReaderReply":
            image = sent_images(body)[0]
            return Reply(json.dumps({"answer": "red" if image.width < 200 else "blue"}))
        if name == "Targets":
            return Reply('{"missing": ["the sign"]}')
        box = frame_box(int(size.group(1)), int(size.group(2)))
        steps = planner_steps(body)
        return action(thought="Look there.", action=["zoom", "read"][min(steps, 1)], box=box)
    return answer
