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

from mmcof_gen import cof_release
from mmcof_gen.evaluate import EvalSettings, evaluate, evaluate_bench
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


def release_judge(server: ScriptedServer):
    return chat_model(cof_release.judge_config(ChatModelConfig(base_url=server.url, model="j", timeout=10.0)))


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
        report = evaluate(model(server), load_bench(bench), settings, tmp_path / "out", judge=release_judge(judge),
                          full=True)

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
                   and set(r) == {"model", "messages", "temperature"} and r["temperature"] == 0.0 for r in asked)
    for request in server.requests:  # the release's SamplingParams(max_tokens=512, temperature=0), with nothing left
        assert {k: request[k] for k in ("temperature", "top_p", "max_tokens", "repetition_penalty")} == {
            "temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "repetition_penalty": 1.0}
    assert report["protocol"] == "cof-release"
    overall = report["rows"][0]
    assert (overall["resolution"], overall["n"], overall["accuracy"]) == (3840, 10, 0.5)
    assert overall["comparable"] is False  # evaluate() alone probes no image tokens (evaluate_bench does)
    assert report["not_comparable"] == ["the image tokens at R=3840 were not checked equal to the release's"]
    assert overall["judged"] == sum(bool(item.judge) for item in RELEASE) == 5


def test_the_default_protocol_differs_where_the_release_does(tmp_path):
    """The same replies under the project's protocol: last answer, case-insensitive letters, text errors for
    bad calls (so the earlier items are right here and wrong in the release)."""
    bench = write_bench(tmp_path / "vstar")
    with ScriptedServer(lambda body: Reply(item_of(body).replies[sum(m["role"] == "assistant"
                                                                     for m in body["messages"])])) as server:
        report = evaluate(model(server), load_bench(bench)[:3], EvalSettings(resolutions=[3840]), tmp_path / "out",
                          full=True, image_tokens={"3840": {"frame": [588, 448], "tokens": 336, "release": True}})
    records = {r["item"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert [records[f"direct_attributes/sa_{n}"]["correct"] for n in (1, 2, 3)] == [True, True, True]
    assert report["not_comparable"] == ["protocol mmcof, not cof-release"] and not report["rows"][0]["comparable"]


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
                 tmp_path / "out", judge=release_judge(judge))
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


def release_server(tokens_of=cof_release.image_tokens, fail: str | None = None) -> ScriptedServer:
    """A model server that counts an image's prompt tokens with `tokens_of(width, height)` (the release's
    processor by default) and answers every question "A" (HTTP 500 for the item whose text starts `fail`)."""
    def answer(body):
        user = body["messages"][-1]["content"]
        images = [Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
                  for part in user if part["type"] == "image_url"] if isinstance(user, list) else []
        text = user if isinstance(user, str) else user[-1]["text"]
        if fail is not None and text.startswith(f"Question: {fail}"):
            return Reply(status=500)
        return Reply("<answer>(A) no</answer>", prompt_tokens=10 + sum(2 + tokens_of(*i.size) for i in images))
    return ScriptedServer(answer)


def test_only_a_whole_error_free_run_with_the_release_image_tokens_is_comparable(tmp_path):
    """The R=3840 rows are comparable for the whole bench, every record without error, and a server whose
    image tokens were probed equal to the release processor's; --limit, an error record, or a server that
    does not count tokens each make them not comparable, with the reason in the report. The judge request
    carries temperature 0 and nothing else, as the release's judge script sends."""
    bench = write_bench(tmp_path / "vstar")
    settings = EvalSettings(protocol="cof-release", resolutions=[448, 3840])
    config = dict(backend="openai", model="m", timeout=10.0, max_retries=0)

    def run(name, server, judge, **kwargs):
        return evaluate_bench(bench, tmp_path / name, settings, ChatModelConfig(base_url=server.url, **config),
                              ChatModelConfig(base_url=judge.url, model="j", timeout=10.0), **kwargs)

    with release_server() as server, ScriptedServer(lambda body: Reply("Judgement: 0")) as judge:
        whole = run("whole", server, judge)
        part = run("part", server, judge, limit=3)
    comparable = {(row["resolution"], row["category"]): row["comparable"] for row in whole["rows"]}
    assert comparable == {(448, "all"): False, (448, "direct_attributes"): False, (448, "relative_position"): False,
                          (3840, "all"): True, (3840, "direct_attributes"): True, (3840, "relative_position"): True}
    assert whole["not_comparable"] == [] and whole["image_tokens"]["3840"]["release"] is True
    assert judge.requests and all(set(r) == {"model", "messages", "temperature"} and r["temperature"] == 0.0
                                  for r in judge.requests)
    assert part["not_comparable"] == ["a part of the benchmark (--limit)"]
    assert not any(row["comparable"] for row in part["rows"])

    with release_server(fail=RELEASE[4].question) as server, ScriptedServer(lambda b: Reply("0")) as judge:
        failed = run("failed", server, judge)
    assert failed["not_comparable"] == ["1 error record(s) at R=3840"]
    assert not any(row["comparable"] for row in failed["rows"])

    with release_server(tokens_of=lambda w, h: -12) as server, ScriptedServer(lambda b: Reply("0")) as judge:
        uncounted = run("uncounted", server, judge)  # prompt tokens of a frame = those of the text: not counted
    assert uncounted["image_tokens"]["3840"] == {"frame": [588, 448], "tokens": None, "release": False}
    assert uncounted["not_comparable"] == ["the image tokens at R=3840 were not checked equal to the release's"]


def test_cof_release_refuses_a_server_that_widens_the_image_limits(tmp_path):
    """A server started with the max_pixels the default protocol needs gives an R=3840 frame of more than
    12,845,056 pixels all its patches; the release's processor shrinks it. cof-release refuses before the run."""
    root = tmp_path / "vstar"
    (root / "direct_attributes").mkdir(parents=True)
    Image.new("RGB", (4480, 3360), (40, 90, 160)).save(root / "direct_attributes/big.jpg", quality=90)
    (root / "test_questions.jsonl").write_text(json.dumps({
        "image": "direct_attributes/big.jpg", "text": "Which color?\n(A) blue\n(B) red" + MC,
        "category": "direct_attributes", "label": "A"}) + "\n", encoding="utf-8")
    frame = make_frame(root / "direct_attributes/big.jpg", 3840, 10**9)
    assert frame.width * frame.height > cof_release.MAX_PIXELS
    widened = frame.width * frame.height // 784
    with release_server(tokens_of=lambda w, h: w * h // 784) as server, ScriptedServer([]) as judge:
        with pytest.raises(ValueError) as refused:
            evaluate_bench(root, tmp_path / "out", EvalSettings(protocol="cof-release", resolutions=[3840]),
                           ChatModelConfig(base_url=server.url, model="m", timeout=10.0),
                           ChatModelConfig(base_url=judge.url, model="j", timeout=10.0))
    assert str(refused.value) == (
        f"--protocol cof-release: openai:m turns the {frame.width}x{frame.height} frame of R=3840 into {widened} image "
        f"tokens, the release's processor into {cof_release.image_tokens(*frame.size)}: serve the model with its "
        "checkpoint's own image limits (no --mm-processor-kwargs max_pixels), or use --protocol mmcof")
    assert not (tmp_path / "out").exists() and judge.requests == []
