"""`mmcof-gen eval`: the V* loaders on the real on-disk layout, scoring, and the CoF loop over real HTTP
(scripted OpenAI-compatible server on 127.0.0.1) and in-process (tiny Qwen2.5-VL built offline)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from mmcof_gen import cof_format, resources
from mmcof_gen.eval_protocols import TOOL_RESULT_TEXT
from mmcof_gen.evaluate import EvalRecord, EvalSettings, evaluate, evaluate_bench, run_episode, summarize
from mmcof_gen.imaging import crop_zoom, make_frame
from mmcof_gen.models.chat import ChatModelConfig, chat_model
from mmcof_gen.scoring import score_by_rules
from mmcof_gen.tasks.vstar import BenchError, load_bench, split_options
from tests.support.scripted_server import Reply, ScriptedServer

MAX_PIXELS = 250_000_000
# (category, name, size, annotation) in V*'s own format: bbox is [x, y, w, h]; the correct option is first.
VSTAR = [
    ("direct_attributes", "sa_101", (640, 480), {"target_object": ["glove"], "bbox": [[400, 300, 40, 30]],
                                                 "question": "What is the color of the glove?",
                                                 "options": ["blue", "red", "green", "white"]}),
    ("direct_attributes", "sa_102", (480, 640), {"target_object": ["flag"], "bbox": [[10, 20, 30.4, 40.6]],
                                                 "question": "What is the material of the flag?",
                                                 "options": ["cloth", "paper", "metal", "plastic"]}),
    ("relative_position", "sa_201", (800, 400), {"target_object": ["cup", "dog"],
                                                 "bbox": [[50, 60, 20, 20], [600, 100, 80, 60]],
                                                 "question": "Is the cup on the left or right side of the dog?",
                                                 "options": ["The cup is on the left side of the dog.",
                                                             "The cup is on the right side of the dog."]}),
]


def write_vstar(root: Path, questions: bool = False) -> Path:
    """A small V*-bench in the real on-disk layout (category folders of <name>.jpg + <name>.json), and
    optionally its `test_questions.jsonl` (options in another order, letter labels) as HF ships it."""
    lines = []
    for number, (category, name, size, annotation) in enumerate(VSTAR):
        (root / category).mkdir(parents=True, exist_ok=True)
        image = Image.new("RGB", size, (90, 120, 60))
        draw = ImageDraw.Draw(image)
        for i, (x, y, w, h) in enumerate(annotation["bbox"]):
            draw.rectangle((x, y, x + w, y + h), fill=(20 + 80 * i, 40, 200))
        draw.text((size[0] // 3, size[1] // 2), name, fill=(255, 255, 255))
        image.save(root / category / f"{name}.jpg", quality=90)
        (root / category / f"{name}.json").write_text(json.dumps(annotation), encoding="utf-8")
        options = annotation["options"][1:] + annotation["options"][:1]  # correct option last
        text = (annotation["question"] + "".join(f"\n({chr(65 + i)}) {o}" for i, o in enumerate(options))
                + "\nAnswer with the option's letter from the given choices directly.")
        lines.append(json.dumps({"question_id": str(number), "image": f"{category}/{name}.jpg", "text": text,
                                 "category": category, "label": chr(65 + len(options) - 1)}))
    if questions:
        (root / "test_questions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def item_frame(item, resolution):
    return make_frame(item.image, resolution, MAX_PIXELS)


def openai_model(server: ScriptedServer, **overrides):
    fields = dict(backend="openai", base_url=server.url, model="scripted-model", backoff_seconds=0.01,
                  max_backoff_seconds=0.02, timeout=10.0)
    return chat_model(ChatModelConfig(**(fields | overrides)))


def decoded(part: dict) -> Image.Image:
    header, payload = part["image_url"]["url"].split(",", 1)
    assert header == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB")


def images_of(request: dict) -> list[Image.Image]:
    return [decoded(part) for message in request["messages"] if isinstance(message["content"], list)
            for part in message["content"] if part["type"] == "image_url"]


# -- loaders -------------------------------------------------------------------------------------------------

def test_vstar_folders_give_targets_xyxy_boxes_and_a_fixed_option_shuffle(tmp_path):
    items = load_bench(write_vstar(tmp_path))
    assert [item.id for item in items] == ["direct_attributes/sa_101", "direct_attributes/sa_102",
                                           "relative_position/sa_201"]
    glove, flag, cup = items
    assert glove.image == tmp_path / "direct_attributes" / "sa_101.jpg"
    assert (glove.question, glove.answer, glove.category) == ("What is the color of the glove?", "blue", "direct_attributes")
    assert sorted(glove.options) == sorted(VSTAR[0][3]["options"])
    assert glove.options[ord(glove.answer_letter) - 65] == "blue"
    assert (glove.targets, glove.boxes) == (["glove"], [(400, 300, 440, 330)])
    assert flag.boxes == [(10, 20, 40, 61)]  # [x, y, w, h] with fractions -> rounded [x1, y1, x2, y2]
    assert (cup.targets, cup.boxes, cup.category) == (["cup", "dog"], [(50, 60, 70, 80), (600, 100, 680, 160)],
                                                      "relative_position")
    assert [i.options for i in load_bench(tmp_path)] == [i.options for i in items]  # same order every time


def test_vstar_test_questions_keep_the_release_order_letters_and_question_text(tmp_path):
    root = write_vstar(tmp_path, questions=True)
    items = load_bench(root)
    assert len(items) == 3
    glove = items[0]
    assert glove.options == ["red", "green", "white", "blue"]
    assert (glove.answer, glove.answer_letter) == ("blue", "D")
    assert (glove.targets, glove.boxes) == (["glove"], [(400, 300, 440, 330)])  # joined from sa_101.json
    # The CoF eval sends f"Question: {text}{USER_PROMPT}"; ours rebuilds the same string from the parts.
    for item, line in zip(items, (root / "test_questions.jsonl").read_text().splitlines()):
        text = json.loads(line)["text"]
        assert cof_format.question_text(item.question, item.options) == "Question: " + text
    assert [i.id for i in load_bench(root / "test_questions.jsonl")] == [i.id for i in items]


def test_split_options_leaves_an_open_question_whole():
    assert split_options("What does the sign say?") == ("What does the sign say?", None)


def test_generic_jsonl_accepts_letter_or_text_answers_and_names_bad_lines(tmp_path):
    Image.new("RGB", (64, 48)).save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "Color?", "options": ["red", "blue"], "answer": "(B)", "category": "color"},
            {"image": "a.png", "question": "Text?", "answer": "STOP", "bbox": [1, 2, 3, 4]}]
    (tmp_path / "bench.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    first, second = load_bench(tmp_path / "bench.jsonl")
    assert (first.answer, first.answer_letter, first.category) == ("blue", "B", "color")
    assert (second.options, second.answer, second.boxes, second.category) == (None, "STOP", [(1, 2, 3, 4)], "all")
    (tmp_path / "bad.jsonl").write_text(json.dumps({**rows[0], "answer": "purple"}) + "\n")
    with pytest.raises(BenchError, match=r"bad.jsonl:1: answer 'purple' is neither an option nor an option letter"):
        load_bench(tmp_path / "bad.jsonl")
    (tmp_path / "gone.jsonl").write_text(json.dumps({**rows[1], "image": "missing.png"}) + "\n")
    with pytest.raises(BenchError, match=r"gone.jsonl:1: image 'missing.png' does not exist"):
        load_bench(tmp_path / "gone.jsonl")


def test_folder_without_vstar_content_is_refused(tmp_path):
    with pytest.raises(BenchError, match="holds neither test_questions.jsonl nor category folders"):
        load_bench(tmp_path)


# -- scoring -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("predicted, correct, method", [
    ("B", True, "option"), ("(B)", True, "option"), ("B.", True, "option"), ("B)", True, "option"),
    ("(B) blue", True, "option"), ("B. blue", True, "option"), ("A", False, "option"), ("(A) blue", False, "option"),
    ("blue", True, "option"), ("Blue.", True, "option"), ("red", False, "option"),
    ("", False, "no_answer"), (None, False, "no_answer"),
])
def test_multiple_choice_scored_by_letter_then_option_text(predicted, correct, method):
    score = score_by_rules(predicted, ["red", "blue"], "blue")
    assert (score.correct, score.method) == (correct, method)


def test_unmatched_answers_are_left_to_the_judge():
    assert score_by_rules("it is a bluish one", ["red", "blue"], "blue") is None
    assert score_by_rules("E", ["red", "blue"], "blue") is None  # not an option letter here
    assert score_by_rules("Stop!", None, "STOP").method == "match"
    assert score_by_rules("go", None, "STOP") is None


# -- the CoF loop over real HTTP -----------------------------------------------------------------------------

def test_two_zoom_conversation_sends_exact_crops_of_the_frame_and_scores(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar", questions=True))[0]
    frame = item_frame(glove, 448)
    first, second = (300, 200, 420, 300), (340, 230, 380, 260)  # the second lies inside the first
    script = [Reply(cof_format.zoom_turn("find the glove", first)),
              Reply(cof_format.zoom_turn("closer", second)),
              Reply(cof_format.answer_turn("it is blue", glove.answer_letter))]
    with ScriptedServer(script) as server:
        report = evaluate(openai_model(server), [glove], EvalSettings(resolutions=[448]), tmp_path / "out")
    requests = server.requests
    assert len(requests) == 3
    # every decoding parameter explicit, so that a server's generation config (Qwen2.5-VL's repetition_penalty
    # 1.05) fills in nothing; and recorded with the results
    decoding = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 512, "repetition_penalty": 1.0}
    assert all({key: r[key] for key in decoding} == decoding for r in requests)
    assert report["decoding"] == json.loads((tmp_path / "out" / "eval.json").read_text())["decoding"] == decoding
    assert report["protocol"] == "mmcof"
    last = requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert last[0]["content"] == cof_format.SYSTEM_PROMPT
    assert [p["type"] for p in last[1]["content"]] == ["image_url", "text"]
    assert last[1]["content"][1]["text"] == (cof_format.question_text(glove.question, glove.options)
                                             + cof_format.FORMAT_SUFFIX)
    assert last[2]["content"] == cof_format.zoom_turn("find the glove", first)
    for turn in (last[3], last[5]):
        assert [p["type"] for p in turn["content"]] == ["image_url", "text"]
        assert turn["content"][1]["text"] == TOOL_RESULT_TEXT == cof_format.FORMAT_SUFFIX
    sent = images_of(requests[-1])
    expected = [frame, crop_zoom(frame, first), crop_zoom(frame, second)]  # both crops are of the FRAME
    assert [image.size for image in sent] == [image.size for image in expected]
    assert all(a.tobytes() == b.tobytes() for a, b in zip(sent, expected))
    assert [len(images_of(r)) for r in requests] == [1, 2, 3]

    record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert (record["correct"], record["method"], record["predicted"]) == (True, "option", "D")
    assert (record["generations"], record["max_images"], record["tokens"]) == (3, 3, 15)
    assert [tuple(z) for z in record["zooms"]] == [first, second]
    assert (record["stop"], record["bad_calls"], tuple(record["frame_size"])) == ("answer", [], frame.size)
    overall, category = report["rows"]
    assert overall == {"mode": "cof", "resolution": 448, "category": "all", "n": 1, "accuracy": 1.0,
                       "zoom_rate": 1.0, "mean_zooms": 2.0, "mean_tokens": 15.0, "no_answer": 0,
                       "bad_call": 0, "errors": 0, "judged": 0, "comparable": False}
    assert category["category"] == "direct_attributes"
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rows"] == report["rows"]


def test_invalid_calls_get_a_text_error_and_no_image(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar"))[0]
    frame = item_frame(glove, 224)
    outside = (0, 0, frame.width + 50, 10)
    script = [Reply(cof_format.zoom_turn("look", outside)),
              Reply('<think> hm </think>\n<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {bbox_2d}}\n</tool_call>'),
              Reply("<think> well </think>\n<answer> purple </answer>")]
    with ScriptedServer(script) as server:
        report = evaluate(openai_model(server), [glove], EvalSettings(resolutions=[224]), tmp_path / "out")
    last = server.requests[-1]["messages"]
    assert [m["role"] for m in last] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert isinstance(last[3]["content"], str) and isinstance(last[5]["content"], str)  # text only, no image
    assert f"is outside the {frame.width}x{frame.height} image" in last[3]["content"]
    assert "not valid JSON" in last[5]["content"]
    assert last[3]["content"].endswith(cof_format.FORMAT_SUFFIX)
    assert [len(images_of(r)) for r in server.requests] == [1, 1, 1]
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert (record["correct"], record["method"], record["zooms"], len(record["bad_calls"])) == (False, "unmatched", [], 2)
    assert (report["rows"][0]["bad_call"], report["rows"][0]["zoom_rate"]) == (1, 0.0)


def test_a_model_that_always_zooms_stops_at_six_generations_and_six_images(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar"))[0]
    with ScriptedServer(lambda body: Reply(cof_format.zoom_turn("again", (10, 10, 60, 60)))) as server:
        report = evaluate(openai_model(server), [glove], EvalSettings(resolutions=[224]), tmp_path / "out")
    assert [len(images_of(r)) for r in server.requests] == [1, 2, 3, 4, 5, 6]
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert (record["generations"], record["max_images"], len(record["zooms"])) == (6, 6, 5)
    assert (record["stop"], record["predicted"], record["correct"]) == ("generation_limit", None, False)
    assert report["rows"][0]["no_answer"] == 1


def test_baseline_no_zoom_asks_once_without_tools(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar"))[0]
    with ScriptedServer(lambda body: Reply(glove.answer_letter if "# Tools" not in json.dumps(body)
                                           else cof_format.answer_turn("sure", "A"))) as server:
        report = evaluate(openai_model(server), [glove], EvalSettings(resolutions=[224], baseline_no_zoom=True),
                          tmp_path / "out")
    plain = [r for r in server.requests if "# Tools" not in r["messages"][0]["content"]]
    assert len(plain) == 1 and plain[0]["messages"][0]["content"] == "You are a helpful assistant."
    assert plain[0]["messages"][1]["content"][1]["text"] == cof_format.question_text(glove.question, glove.options)
    by_mode = {row["mode"]: row for row in report["rows"] if row["category"] == "all"}
    assert by_mode["no_zoom"]["accuracy"] == 1.0
    assert by_mode["cof"]["accuracy"] == (1.0 if glove.answer_letter == "A" else 0.0)


def test_judge_decides_what_the_rules_cannot(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar"))[0]
    with ScriptedServer([Reply("<answer> a bluish one </answer>")]) as server, \
            ScriptedServer([Reply('{"correct": true}')]) as judge:
        report = evaluate(openai_model(server), [glove], EvalSettings(resolutions=[224]), tmp_path / "out",
                          judge=openai_model(judge))
    prompt = judge.requests[0]["messages"][0]["content"]
    assert f"Reference answer: ({glove.answer_letter}) blue" in prompt and "a bluish one" in prompt
    assert judge.requests[0]["response_format"]["type"] == "json_schema"
    assert (report["rows"][0]["accuracy"], report["rows"][0]["judged"]) == (1.0, 1)


def test_failed_samples_are_recorded_then_retried_on_resume(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar"))[0]
    settings = EvalSettings(resolutions=[224])
    with ScriptedServer([Reply(status=500)]) as server:
        report = evaluate(openai_model(server, max_retries=0), [glove], settings, tmp_path / "out")
    assert (report["rows"][0]["errors"], report["rows"][0]["accuracy"]) == (1, 0.0)
    with ScriptedServer([Reply(cof_format.answer_turn("ok", glove.answer_letter))]) as server:
        report = evaluate(openai_model(server), [glove], settings, tmp_path / "out")
    assert (report["rows"][0]["errors"], report["rows"][0]["accuracy"], report["rows"][0]["n"]) == (0, 1.0, 1)
    with ScriptedServer([]) as server:  # everything done: no request at all
        evaluate(openai_model(server), [glove], settings, tmp_path / "out")
    assert server.requests == []
    with pytest.raises(ValueError, match="holds results of another evaluation \\(settings differ\\)"):
        evaluate(openai_model(server), [glove], EvalSettings(resolutions=[448]), tmp_path / "out")


def test_a_changed_prompt_file_or_judge_is_a_new_evaluation_never_a_resume(tmp_path, monkeypatch):
    """Every prompt file a request is made of (the CoF format's, the release's judge prompt, eval's own) and
    the judge's request settings are in the fingerprint: a folder made with other ones is refused."""
    glove = load_bench(write_vstar(tmp_path / "vstar"))[0]
    prompts = tmp_path / "prompts"
    for kind in ("cof", "eval"):
        shutil.copytree(resources.prompts(kind), prompts / kind)
    monkeypatch.setattr(resources, "prompts", lambda kind: prompts / kind)
    settings, out = EvalSettings(resolutions=[224]), tmp_path / "out"
    with ScriptedServer(lambda body: Reply("<answer> a bluish one </answer>")) as server, \
            ScriptedServer(lambda body: Reply('{"correct": true}')) as judge:
        evaluate(openai_model(server), [glove], settings, out, judge=openai_model(judge))
        for name in ("cof/release_judge.txt", "cof/system.txt", "cof/format_suffix.txt", "eval/tool_error.txt"):
            original = (prompts / name).read_text(encoding="utf-8")
            (prompts / name).write_text(original + "edited\n", encoding="utf-8")
            with pytest.raises(ValueError, match="^--out .* holds results of another evaluation \\(prompts differ\\)"):
                evaluate(openai_model(server), [glove], settings, out, judge=openai_model(judge))
            (prompts / name).write_text(original, encoding="utf-8")
        with pytest.raises(ValueError, match="another evaluation \\(judge_identity differ\\)"):
            evaluate(openai_model(server), [glove], settings, out,
                     judge=openai_model(judge, structured_output="json_object"))
        asked = len(server.requests)
        evaluate(openai_model(server), [glove], settings, out, judge=openai_model(judge))  # the same: a resume
    assert len(server.requests) == asked == 1
    made_with = json.loads((out / "eval.json").read_text())
    assert set(made_with["prompts"]) == {f"{kind}/{path.name}" for kind in ("cof", "eval")
                                         for path in (prompts / kind).glob("*.txt")}


def test_an_unreadable_image_is_one_error_record_and_the_rest_still_runs(tmp_path):
    items = load_bench(write_vstar(tmp_path / "vstar"))
    items[1].image.write_bytes(b"not a jpeg at all")
    with ScriptedServer(lambda body: Reply("<answer> A </answer>")) as server:
        report = evaluate(openai_model(server), items, EvalSettings(resolutions=[224]), tmp_path / "out")
    records = {r["item"]: r for r in map(json.loads, (tmp_path / "out" / "results.jsonl").read_text().splitlines())}
    assert records["direct_attributes/sa_102"]["error"].startswith("ImageError")
    assert [records[i.id]["error"] for i in (items[0], items[2])] == [None, None]
    assert len(server.requests) == 2
    assert (report["rows"][0]["n"], report["rows"][0]["errors"]) == (3, 1)


def test_eval_command_prints_the_table_and_refuses_ambiguous_backends(tmp_path):
    root = write_vstar(tmp_path / "vstar")
    cli = [sys.executable, "-m", "mmcof_gen.cli", "eval", "--bench", str(root), "--out", str(tmp_path / "out")]
    with ScriptedServer(lambda body: Reply("<answer> A </answer>")) as server:
        done = subprocess.run([*cli, "--endpoint", server.url, "--served-model", "m", "--resolutions", "224,448",
                               "--limit", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "accuracy" in done.stdout and "direct_attributes" in done.stdout
    assert len(server.requests) == 1 + 2 + 4  # the image-token check (text alone, a frame per R), then 2 x 2 answers
    refused = subprocess.run([*cli, "--model", "x", "--endpoint", "http://h/v1"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("mmcof-gen: eval: pass exactly one of --model (in-process) or "
                                      "--endpoint URL --served-model NAME")
    tiny_r = subprocess.run([*cli, "--endpoint", "http://h/v1", "--served-model", "m", "--resolutions", "64"],
                            capture_output=True, text=True)
    assert (tiny_r.returncode, tiny_r.stderr.strip()) == (2, "mmcof-gen: eval: --resolutions '64' has a side length "
                                                             "outside 112 to 3840; give pixel budgets like "
                                                             "448,672,1024,1920")


# -- the CoF loop in process ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tests.support.tiny_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("qwen"))


def test_tiny_qwen_runs_the_loop_end_to_end_in_process(tiny_qwen, tmp_path):
    root = write_vstar(tmp_path / "vstar", questions=True)
    settings = EvalSettings(resolutions=[224], max_new_tokens=24)
    config = ChatModelConfig(backend="transformers", model=str(tiny_qwen), device="cpu")
    report = evaluate_bench(root, tmp_path / "out", settings, config, limit=2)
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert sorted(r["item"] for r in records) == ["direct_attributes/sa_101", "direct_attributes/sa_102"]
    for record in records:  # random weights: noise answers, but the structure and the limits hold
        assert record["error"] is None
        assert 1 <= record["generations"] <= 6 and 1 <= record["max_images"] <= 6
        assert 0 < record["tokens"] <= 24 * record["generations"]
        assert len(record["replies"]) == record["generations"]
        assert max(record["frame_size"][0], record["frame_size"][1]) <= 336  # about 224 x 224 pixels
    assert report["rows"][0]["n"] == 2


def test_tiny_qwen_forced_to_zoom_sees_at_most_six_images(tiny_qwen):
    """The random model never writes a tool call, so its generation is forced to one (a logits
    processor on the real `generate`): every turn then runs the real model over all images so far."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    model = chat_model(ChatModelConfig(backend="transformers", model=str(tiny_qwen), device="cpu"))
    target = model.processor.tokenizer(cof_format.zoom_turn("zoom", (8, 8, 100, 90)))["input_ids"]
    target.append(model.processor.tokenizer.convert_tokens_to_ids("<|im_end|>"))

    class Force(LogitsProcessor):
        def __init__(self):
            self.start = None

        def __call__(self, input_ids, scores):
            self.start = input_ids.shape[1] if self.start is None else self.start
            step = min(input_ids.shape[1] - self.start, len(target) - 1)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, target[step]] = 0
            return forced

    generate, images_seen = model.model.generate, []

    def forced_generate(**inputs):
        images_seen.append(int(inputs["image_grid_thw"].shape[0]))
        return generate(**inputs, logits_processor=LogitsProcessorList([Force()]))

    model.model.generate = forced_generate
    frame = Image.new("RGB", (224, 168), (30, 90, 160))
    episode = asyncio.run(run_episode(model, frame, "What color?", ["red", "blue"], EvalSettings()))
    assert images_seen == [1, 2, 3, 4, 5, 6]
    assert (len(episode.replies), episode.max_images, len(episode.zooms)) == (6, 6, 5)
    assert episode.replies[0] == cof_format.zoom_turn("zoom", (8, 8, 100, 90))
    assert (episode.stop, episode.answer) == ("generation_limit", None)


def test_tiny_qwen_sees_each_frame_unresized_and_the_report_records_its_tokens(tiny_qwen, tmp_path):
    """The tiny processor caps images at 224x224 pixels: eval widens it, so the R=448 frame reaches the model
    whole (its grid is the frame over 14-pixel patches), and the report says how many tokens each R became."""
    from mmcof_gen.evaluate import check_image_tokens

    root = write_vstar(tmp_path / "vstar", questions=True)
    item = load_bench(root)[0]
    settings = EvalSettings(resolutions=[224, 448], max_new_tokens=2)
    model = chat_model(ChatModelConfig(backend="transformers", model=str(tiny_qwen), device="cpu"))
    assert model.processor.image_processor.size["longest_edge"] == 224 * 224
    tokens = asyncio.run(check_image_tokens(model, item, settings))
    frames = {r: item_frame(item, r) for r in (224, 448)}
    assert tokens == {str(r): {"frame": list(f.size), "tokens": f.width * f.height // 784} for r, f in frames.items()}
    grids, generate = [], model.model.generate
    model.model.generate = lambda **inputs: grids.append(inputs["image_grid_thw"].tolist()) or generate(**inputs)
    asyncio.run(run_episode(model, frames[448], item.question, item.options, settings))
    assert grids[0] == [[1, frames[448].height // 14, frames[448].width // 14]]
    report = evaluate_bench(root, tmp_path / "out", settings,
                            ChatModelConfig(backend="transformers", model=str(tiny_qwen), device="cpu"), limit=1)
    assert report["image_tokens"] == tokens


def test_a_server_that_downsizes_a_frame_is_refused_for_that_resolution(tmp_path):
    """A server is asked: the prompt tokens with the frame minus without it. One that caps images at 210x210
    pixels (too few tokens for the 448x336 frame of R=448) is refused in one line; R=224 passes and is recorded."""
    root = write_vstar(tmp_path / "vstar", questions=True)
    item = load_bench(root)[0]

    def server_with_cap(body):
        image = next((decoded(part) for m in body["messages"] if isinstance(m["content"], list)
                      for part in m["content"] if part["type"] == "image_url"), None)
        if image is None:
            return Reply("<answer> D </answer>", prompt_tokens=10)
        return Reply("<answer> D </answer>", prompt_tokens=10 + 2 + min(image.width * image.height, 210 * 210) // 784)

    config = dict(backend="openai", model="capped", timeout=10.0)
    with ScriptedServer(server_with_cap) as server:
        report = evaluate_bench(root, tmp_path / "ok", EvalSettings(resolutions=[224]),
                                ChatModelConfig(base_url=server.url, **config), limit=1)
        with pytest.raises(ValueError) as refused:
            evaluate_bench(root, tmp_path / "capped", EvalSettings(resolutions=[224, 448]),
                           ChatModelConfig(base_url=server.url, **config), limit=1)
    small, large = item_frame(item, 224), item_frame(item, 448)
    assert report["image_tokens"] == {"224": {"frame": list(small.size), "tokens": small.width * small.height // 784}}
    assert str(refused.value) == (f"--resolutions 448: openai:capped turns a {large.width}x{large.height} frame into "
                                  f"{210 * 210 // 784} image tokens, not its {large.width * large.height // 784}: the "
                                  "server downsizes it (vLLM: serve with --mm-processor-kwargs "
                                  "'{\"max_pixels\": 14745600}'), or drop 448; a model that is no "
                                  "Qwen2.5-VL student: pass --target")
    assert not (tmp_path / "capped").exists()


def test_summary_counts_a_record_of_category_all_once():
    """A generic JSONL without categories gives every item category "all": its "all" row has n = the items."""
    records = [EvalRecord(id=f"r{i}", item=f"q{i}", category=category, resolution=448, mode="cof", correct=i == 0)
               for i, category in enumerate(["all", "all", "glove"])]
    rows = {row["category"]: row for row in summarize(records)}
    assert (rows["all"]["n"], rows["all"]["accuracy"]) == (3, 0.3333)
    assert (rows["glove"]["n"], rows["glove"]["accuracy"]) == (1, 0.0)
    assert list(rows) == ["all", "glove"]
