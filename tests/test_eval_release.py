"""`eval --protocol cof-release` against the Chain-of-Focus release's own V* loop and judge script.

The fixtures were recorded by running the release's `eval/vstar/vllm_inference.py` and `judge_result.py`
unmodified, with vLLM and the judge's OpenAI client replaced by recorders returning the scripted replies
below, on the ten generated images below: for each item the release's verdict, a hash of its first request
rendered with Qwen2-VL's chat template, the pixels of every image of its last request, and a hash of each
judge prompt. Nothing of the release is imported here. Each item covers one way the protocols differ."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from jinja2 import Template
from PIL import Image

from mmcof_gen.evaluate import EvalSettings, evaluate
from mmcof_gen.imaging import frame_from_image, image_sha256, load_image, make_frame
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.tasks.vstar import load_bench
from tests.support.scripted_server import Reply, ScriptedServer
from tests.support.tiny_models import QWEN_CHAT_TEMPLATE

COLORS = ["blue", "red", "green", "white"]
MC = "\nAnswer with the option's letter from the given choices directly."


def call(arguments: str, name: str = "image_zoom_in_tool") -> str:
    return f'<think> look closer </think>\n<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


@dataclass
class Item:
    image: str
    size: tuple[int, int]
    label: str
    question: str
    replies: list[str]
    judge: list[str]           # the judge's scripted replies (it is asked only where the rules do not decide)
    verdict: bool              # the release's
    first_request: str         # sha256[:16] of the release's first request after the chat template
    judge_prompts: list[str] = field(default_factory=list)  # sha256[:16] of each judge prompt
    images: list = field(default_factory=list)  # (W, H, pixel sha256[:16]) of each image of the last request

    @property
    def text(self) -> str:
        """V*'s question text: the question, its options, the instruction."""
        if self.image.startswith("direct_attributes"):
            options = COLORS
        else:
            a, b = re.fullmatch(r"Is the (\w+) on the left or right side of the (\w+)\?", self.question).groups()
            options = [f"The {a} is on the left side of the {b}.", f"The {a} is on the right side of the {b}."]
        return self.question + "".join(f"\n({chr(65 + i)}) {o}" for i, o in enumerate(options)) + MC


RELEASE = [
    # the FIRST <answer> counts (here B), not the last
    Item("direct_attributes/sa_1.png", (600, 450), "A", "What is the color of the glove?",
         ["<think> red? no </think>\n<answer>B</answer> wait <answer>A</answer>"], [], False, "f82e857027e9741a",
         images=[(588, 448, "15fca1832ad92005")]),
    # letters are case-sensitive: "a" is decided wrong by rule, without a judge
    Item("direct_attributes/sa_2.png", (600, 450), "A", "What is the color of the cap?",
         ["<think> it is blue </think>\n<answer>a</answer>"], [], False, "40b07d0450861d81",
         images=[(588, 448, "6b5b8afe2661d78c")]),
    # an answer across a newline is not found: the judge gets the empty answer
    Item("direct_attributes/sa_3.png", (640, 480), "A", "What is the color of the scarf?",
         ["<think> blue </think>\n<answer>(A)\nblue</answer>"], ["Judgement: 0"], False, "8e7959fc73be8bb3",
         ["5cb1d882d2f0cbb2"], [(644, 476, "7a24d9fe433089f8")]),
    # \boxed{A}: the boxed text holds no <answer>, so the judge gets the empty answer
    Item("direct_attributes/sa_4.png", (640, 480), "A", "What is the color of the bag?",
         ["<think> blue </think>\n<answer>\\boxed{A}</answer>"], ["0"], False, "4d91e472fad30bbc",
         ["0f6c4263a50ef3d7"], [(644, 476, "093b6d060eac9555")]),
    # a fractional box is enlarged, then truncated: crop (1050, 717, 1350, 913); "A." by rule
    Item("direct_attributes/sa_5.png", (1600, 1200), "A", "What is the color of the kite?",
         [call('{"bbox_2d": [1100.6, 750.4, 1300.5, 880.5]}'), "<think> blue </think>\n<answer> A. </answer>"],
         [], True, "b659f960b8077dc1", images=[(1596, 1204, "b8c0d71bd1d1ab21"), (588, 392, "081a9d09bb00e1b2")]),
    # a box outside the frame zooms on the whole frame, upscaled 2x; "(C) <option text>" inside a longer answer
    Item("direct_attributes/sa_6.png", (600, 450), "C", "What is the color of the door?",
         [call('{"bbox_2d": [100, 100, 900, 300]}'), "<think> green </think>\n<answer>(C) green, clearly</answer>"],
         [], True, "abdea8620b5ed361", images=[(588, 448, "391b4a45595554e0"), (1176, 896, "14586b97f5e06117")]),
    # no bbox_2d: the frame comes back unchanged; "(B) <other text>" goes to the judge, whose reference is "B"
    Item("relative_position/sa_7.png", (700, 420), "B", "Is the cup on the left or right side of the dog?",
         [call('{"label": "cup"}'), "<think> right </think>\n<answer>(B) right of the dog</answer>"],
         ["Judgement: 1"], True, "8fd6671ced35b8c2", ["5e4dad713bb8eb52"],
         [(700, 420, "c062d69dc3947bd8"), (700, 420, "c062d69dc3947bd8")]),
    # a call that is not JSON: the whole frame, upscaled; the option text alone goes to the judge
    Item("relative_position/sa_8.png", (700, 420), "A", "Is the cup on the left or right side of the bench?",
         ['<think> hm </think>\n<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {bbox_2d: [1, 2, 30, 40]}}'
          "\n</tool_call>", "<think> left </think>\n<answer>The cup is on the left side of the bench.</answer>"],
         ["1"], True, "3db0821ce1a946b2", ["e3b781550b8bdf17"],
         [(700, 420, "3bfe31d3583922d0"), (1400, 840, "14d314a2bd7743e0")]),
    # no closing tag: the whole frame, upscaled; three elements: the frame unchanged; "(B)" by rule
    Item("relative_position/sa_9.png", (500, 500), "B", "Is the bottle on the left or right side of the chair?",
         [call('{"bbox_2d": [10, 10, 200, 200]}').replace("<think> look closer </think>", "<think> a </think>")
          .removesuffix("\n</tool_call>"),
          call('{"bbox_2d": [10, 10, 200]}'), "<think> right </think>\n<answer>(B)</answer>"],
         [], True, "5052f1b6775d11df",
         images=[(504, 504, "140b059814bb3171"), (1008, 1008, "727e697ba2fa17db"), (504, 504, "140b059814bb3171")]),
    # another tool name is executed all the same; six zooms end the episode and the judge gets the empty answer
    Item("relative_position/sa_10.png", (560, 420), "A", "Is the lamp on the left or right side of the sofa?",
         [call('{"bbox_2d": [10, 20, 200, 150]}', name="crop")] + [call('{"bbox_2d": [40, 40, 120, 100]}')] * 5,
         ["Judgement: 0"], False, "c7b2732c56503b02", ["d01fb13c37c31cee"],
         [(560, 420, "e31c43e2d8a0d661"), (504, 364, "ba7c695839a91eb9")] + [(252, 168, "0eb4868997e0a4e6")] * 4),
]


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize(size, Image.BILINEAR).save(path)


def write_bench(root: Path) -> Path:
    lines = []
    for number, item in enumerate(RELEASE):
        write_image(root / item.image, item.size, number)
        lines.append({"question_id": number, "image": item.image, "text": item.text,
                      "category": item.image.split("/")[0], "label": item.label})
    (root / "test_questions.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return root


def model(server: ScriptedServer):
    return chat_model(ChatModelConfig(backend="openai", base_url=server.url, model="m", timeout=10.0))


def short_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def images_of(request: dict) -> list[tuple[int, int, str]]:
    shown = []
    for message in request["messages"]:
        for part in message["content"] if isinstance(message["content"], list) else []:
            if part["type"] == "image_url":
                image = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
                shown.append((image.width, image.height, image_sha256(image)[:16]))
    return shown


def item_of(body: dict) -> Item:
    first = body["messages"][1]["content"][-1]["text"]
    return next(item for item in RELEASE if first.startswith(f"Question: {item.text}\n"))


def test_cof_release_gives_the_release_verdict_requests_and_judge_prompts_on_every_fixture(tmp_path):
    bench = write_bench(tmp_path / "vstar")

    def answer(body):
        item = item_of(body)
        return Reply(item.replies[sum(m["role"] == "assistant" for m in body["messages"])])

    def judgement(body):
        prompt = body["messages"][1]["content"]
        return Reply(next(item for item in RELEASE if f"[Question]: {item.text}\n" in prompt).judge[0])

    settings = EvalSettings(protocol="cof-release", resolutions=[3840])
    with ScriptedServer(answer) as server, ScriptedServer(judgement) as judge:
        report = evaluate(model(server), load_bench(bench), settings, tmp_path / "out", judge=model(judge))

    records = {r["item"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    template = Template(QWEN_CHAT_TEMPLATE)
    for item in RELEASE:
        name = item.image.removesuffix(".png")
        requests = [r for r in server.requests if item_of(r) is item]
        asked = [r for r in judge.requests if f"[Question]: {item.text}\n" in r["messages"][1]["content"]]
        assert records[name]["correct"] is item.verdict, name
        assert len(requests) == len(item.replies), name
        assert short_sha(template.render(messages=requests[0]["messages"], add_generation_prompt=True)) == \
            item.first_request, name
        assert images_of(requests[-1]) == [tuple(i) for i in item.images], name
        assert [short_sha(r["messages"][1]["content"]) for r in asked] == item.judge_prompts, name
        assert all(r["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
                   and r["temperature"] == 0.0 for r in asked)
    for request in server.requests:  # the release's SamplingParams(max_tokens=512, temperature=0), with nothing left
        assert {k: request[k] for k in ("temperature", "top_p", "max_tokens", "repetition_penalty")} == {
            "temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "repetition_penalty": 1.0}
    assert report["protocol"] == "cof-release"
    overall = report["rows"][0]
    assert (overall["resolution"], overall["n"], overall["accuracy"], overall["comparable"]) == (3840, 10, 0.5, True)
    assert overall["judged"] == sum(bool(item.judge) for item in RELEASE) == 5


def test_the_default_protocol_differs_where_the_release_does(tmp_path):
    """The same replies under the project's protocol: last answer, case-insensitive letters, text errors for
    bad calls (so the earlier items are right here and wrong in the release)."""
    bench = write_bench(tmp_path / "vstar")
    with ScriptedServer(lambda body: Reply(item_of(body).replies[sum(m["role"] == "assistant"
                                                                     for m in body["messages"])])) as server:
        evaluate(model(server), load_bench(bench)[:3], EvalSettings(resolutions=[3840]), tmp_path / "out")
    records = {r["item"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert [records[f"direct_attributes/sa_{n}"]["correct"] for n in (1, 2, 3)] == [True, True, True]


def test_cof_release_decodes_the_whole_jpeg_before_resizing(tmp_path):
    """Below 3840 the default protocol decodes JPEGs at a reduced DCT scale (faster, slightly different
    pixels); cof-release decodes them in full, as the release does."""
    root = tmp_path / "vstar"
    (root / "direct_attributes").mkdir(parents=True)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (1500, 2000, 3), dtype=np.uint8)).save(root / "direct_attributes/a.jpg",
                                                                                quality=90)
    (root / "test_questions.jsonl").write_text(json.dumps({
        "image": "direct_attributes/a.jpg", "text": "Which color?\n(A) red\n(B) blue" + MC, "category":
        "direct_attributes", "label": "A"}) + "\n", encoding="utf-8")
    with ScriptedServer(lambda body: Reply("<answer>A</answer>")) as server, \
            ScriptedServer(lambda body: Reply("0")) as judge:
        evaluate(model(server), load_bench(root), EvalSettings(protocol="cof-release", resolutions=[448]),
                 tmp_path / "out", judge=model(judge))
    full = frame_from_image(load_image(root / "direct_attributes/a.jpg", 10**9), 448)
    drafted = make_frame(root / "direct_attributes/a.jpg", 448, 10**9)
    [(width, height, sent)] = images_of(server.requests[0])
    assert (width, height, sent) == (*full.size, image_sha256(full)[:16])
    assert image_sha256(drafted) != image_sha256(full)
    assert judge.requests == []


def test_cof_release_refuses_what_the_release_could_not_run(tmp_path):
    bench = write_bench(tmp_path / "vstar")
    cli = [sys.executable, "-m", "mmcof_gen.cli", "eval", "--bench", str(bench), "--out", str(tmp_path / "out"),
           "--endpoint", "http://127.0.0.1:9/v1", "--served-model", "m", "--resolutions", "3840"]
    for extra, message in [
        (["--protocol", "cof-release"], "mmcof-gen: --protocol cof-release sends every answer its rules cannot score "
                                        "to an LLM judge: pass --judge-endpoint URL --judge-model NAME"),
        (["--protocol", "release"], "mmcof-gen: eval: --protocol: Input should be 'mmcof' or 'cof-release'"),
    ]:
        done = subprocess.run([*cli, *extra], capture_output=True, text=True, timeout=120)
        assert (done.returncode, done.stderr.strip()) == (2, message)
    (bench / "test_questions.jsonl").unlink()
    folders = tmp_path / "folders" / "direct_attributes"
    folders.mkdir(parents=True)
    write_image(folders / "sa_1.png", (600, 450), 0)
    (folders / "sa_1.json").write_text(json.dumps({"question": "Which?", "options": ["a", "b"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="sends V\\*'s question text verbatim: pass a --bench folder"):
        evaluate(model(ScriptedServer([])), load_bench(tmp_path / "folders"), EvalSettings(protocol="cof-release"),
                 tmp_path / "out2", judge=model(ScriptedServer([])))
