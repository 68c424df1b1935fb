"""eval of a Qwen3-VL model over real HTTP: its own tool declared, frames at factor 32, its 0-1000 tool calls read
in that convention and executed with its tool's crop rule; an out-of-range call is an observation."""

from __future__ import annotations

import json

from mmcof_gen import cof_format
from mmcof_gen.evaluate import EvalSettings, evaluate
from mmcof_gen.targets import QWEN3_SYSTEM_PROMPT, qwen3_make_frame, qwen3_zoom
from mmcof_gen.tasks.vstar import load_bench
from tests.support.scripted_server import Reply, ScriptedServer
from tests.test_eval import MAX_PIXELS, images_of, openai_model, write_vstar


def qwen3_turn(thought: str, bbox: list[int]) -> str:
    return cof_format.call_turn(thought, cof_format.call_text({"bbox_2d": bbox, "label": "glove", "img_idx": 0}))


def test_a_qwen3_model_is_evaluated_with_its_own_tool_and_crops(tmp_path):
    glove = load_bench(write_vstar(tmp_path / "vstar", questions=True))[0]
    frame = qwen3_make_frame(glove.image, 448, MAX_PIXELS)
    first = [500, 400, 800, 700]
    script = [Reply(qwen3_turn("find the glove", [500, 400, 1200, 700])),  # out of range: an observation
              Reply(qwen3_turn("find the glove", first)),
              Reply(cof_format.answer_turn("it is blue", glove.answer_letter))]
    with ScriptedServer(script) as server:
        evaluate(openai_model(server, model="Qwen/Qwen3-VL-8B-Instruct"), [glove], EvalSettings(resolutions=[448]),
                 tmp_path / "out")
    requests = server.requests
    last = requests[-1]["messages"]
    assert last[0]["content"] == QWEN3_SYSTEM_PROMPT
    assert "outside the rel1000 range" in last[3]["content"]
    sent = images_of(requests[-1])
    assert sent[0].size == frame.size and sent[0].width % 32 == sent[0].height % 32 == 0
    assert sent[0].tobytes() == frame.tobytes()
    assert sent[1].tobytes() == qwen3_zoom(frame, first).tobytes()
    record = json.loads((tmp_path / "out" / "results.jsonl").read_text())
    assert record["correct"] and record["frame_size"] == list(frame.size)
    width, height = frame.size
    assert record["zooms"] == [[round(500 * width / 1000), round(400 * height / 1000), round(800 * width / 1000),
                                round(700 * height / 1000)]]
    assert len(record["bad_calls"]) == 1 and "rel1000" in record["bad_calls"][0]
