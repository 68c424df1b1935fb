"""Chat backends: the OpenAI-compatible client over real HTTP (scripted server on 127.0.0.1) and the
in-process transformers model (tiny Qwen2.5-VL built offline)."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import json
from types import SimpleNamespace

import pytest
from PIL import Image
from pydantic import BaseModel

from mmcof_gen.config import PIPELINE_LIMITS, load_config
from mmcof_gen.errors import ConfigError
from mmcof_gen.imaging import image_to_png_bytes
from mmcof_gen.models.chat import (ChatError, ChatMessage, ChatModelConfig, OpenAIChat, ReplyError, chat_model,
                                   complete_json, endpoint_limiter)
from mmcof_gen.models.chat.config import LimitAdvice
from mmcof_gen.models.chat.refusals import HTTPStatusError, ServerLimitError, refusal
from tests.support.scripted_server import Reply, ScriptedServer


def openai_config(server: ScriptedServer, **overrides) -> ChatModelConfig:
    fields = dict(backend="openai", base_url=server.url, model="scripted-model", backoff_seconds=0.01,
                  max_backoff_seconds=0.05, timeout=5.0)
    return ChatModelConfig(**(fields | overrides))


def ask(model, messages=None, **kwargs):
    return asyncio.run(model.complete(messages or [ChatMessage("user", "hi")], **kwargs))


def test_reply_carries_text_tokens_and_cost():
    with ScriptedServer([Reply("<answer> A </answer>", prompt_tokens=1000, completion_tokens=200)]) as server:
        model = chat_model(openai_config(server, price_input_per_million=2.0, price_output_per_million=10.0))
        completion = ask(model, max_tokens=64)
    assert completion.text == "<answer> A </answer>"
    assert (completion.prompt_tokens, completion.completion_tokens, completion.retries) == (1000, 200, 0)
    assert completion.cost_usd == pytest.approx(1000 * 2.0 / 1e6 + 200 * 10.0 / 1e6)
    assert server.requests[0]["max_tokens"] == 64
    assert server.requests[0]["temperature"] == 0.0
    assert server.headers[0]["content-type"] == "application/json"  # FastAPI servers (vLLM) parse only JSON


def test_every_request_carries_its_decoding_parameters_explicitly():
    """A served checkpoint's generation config (Qwen2.5-VL: repetition_penalty 1.05) must not fill in what a
    request leaves out; `repetition_penalty: null` is for APIs that refuse the parameter (api.openai.com)."""
    with ScriptedServer(lambda body: Reply("ok")) as server:
        ask(chat_model(openai_config(server)), max_tokens=64)
        ask(chat_model(openai_config(server, top_p=0.9, repetition_penalty=1.05)), max_tokens=8, temperature=0.7)
        ask(chat_model(openai_config(server, repetition_penalty=None)), max_tokens=8)
    sent = [{k: r[k] for k in ("temperature", "top_p", "max_tokens", "repetition_penalty") if k in r}
            for r in server.requests]
    assert sent == [{"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "repetition_penalty": 1.0},
                    {"temperature": 0.7, "top_p": 0.9, "max_tokens": 8, "repetition_penalty": 1.05},
                    {"temperature": 0.0, "top_p": 1.0, "max_tokens": 8}]


def test_images_arrive_as_png_data_urls_in_order_before_the_text():
    red = Image.new("RGB", (30, 20), (255, 0, 0))
    blue = Image.new("RGB", (16, 40), (0, 0, 255))
    blue.putpixel((3, 5), (1, 2, 3))
    with ScriptedServer([Reply("ok")]) as server:
        ask(chat_model(openai_config(server)), [ChatMessage("system", "be brief"),
                                                 ChatMessage("user", "compare", [red, blue])])
    system, user = server.requests[0]["messages"]
    assert system == {"role": "system", "content": "be brief"}
    assert [part["type"] for part in user["content"]] == ["image_url", "image_url", "text"]
    assert user["content"][2]["text"] == "compare"
    for part, sent in zip(user["content"], [red, blue]):
        header, payload = part["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64"
        received = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert received.size == sent.size and received.convert("RGB").tobytes() == sent.tobytes()


def test_an_image_sent_with_every_call_is_encoded_once(monkeypatch):
    encoded = []

    def counting(image, **options):
        encoded.append(image)
        return image_to_png_bytes(image, **options)

    monkeypatch.setattr("mmcof_gen.models.chat.openai_server.image_to_png_bytes", counting)
    frame = Image.new("RGB", (30, 20), (255, 0, 0))
    with ScriptedServer([Reply("ok")] * 3) as server:
        model = chat_model(openai_config(server))
        for _ in range(3):
            ask(model, [ChatMessage("user", "look", [frame])])
    assert encoded == [frame]
    assert server.requests[0]["messages"] == server.requests[2]["messages"]


@pytest.mark.parametrize("fault", [
    Reply(status=429, headers={"Retry-After": "0.05"}),
    Reply(status=500),
    Reply(status=503),
    Reply(drop=True),
    Reply("a long enough reply to be cut in half", truncate=True),
    Reply(body=b"this is not json"),
], ids=["429-retry-after", "500", "503", "dropped-connection", "truncated-body", "invalid-json"])
def test_transient_fault_is_retried_and_counted(fault):
    with ScriptedServer([fault, Reply("fine")]) as server:
        completion = ask(chat_model(openai_config(server)))
    assert completion.text == "fine"
    assert completion.retries == 1
    assert len(server.requests) == 2


def test_timeout_is_retried_and_counted():
    with ScriptedServer([Reply("late", delay=1.5), Reply("fine")]) as server:
        completion = ask(chat_model(openai_config(server, timeout=0.3)))
    assert (completion.text, completion.retries) == ("fine", 1)


def test_retries_are_bounded_then_a_clear_error():
    with ScriptedServer([Reply(status=500)] * 5) as server:
        with pytest.raises(ChatError, match=r"gave up after 2 retries: HTTP 500") as failure:
            ask(chat_model(openai_config(server, max_retries=2)))
    assert failure.value.retries == 2
    assert len(server.requests) == 3


def test_client_error_is_not_retried():
    with ScriptedServer([Reply(status=400), Reply("never")]) as server:
        with pytest.raises(ChatError, match="HTTP 400") as failure:
            ask(chat_model(openai_config(server)))
    assert failure.value.retries == 0
    assert len(server.requests) == 1


# vLLM's words for a request over each of its limits (the message of its 400 body)
OVER_IMAGES = "At most 2 image(s) may be provided in one prompt."
OVER_MAX_TOKENS = "max_tokens=5000 cannot be greater than max_model_len=4096."
OVER_CONTEXT = "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens."


def refused(said: str, advice: LimitAdvice) -> ChatError:
    told = HTTPStatusError(SimpleNamespace(status=400), json.dumps({"error": {"message": said}}).encode())
    return refusal("http://server/v1 (m)", told, 3, 0, advice)


def test_a_refusal_over_a_server_limit_names_the_server_flag_and_only_the_settings_passed_in():
    where = "http://server/v1 (m): HTTP 400: "
    images, max_tokens, context = (refused(said, LimitAdvice())
                                   for said in (OVER_IMAGES, OVER_MAX_TOKENS, OVER_CONTEXT))
    assert isinstance(images, ServerLimitError) and isinstance(max_tokens, ServerLimitError)
    assert type(context) is ChatError
    assert str(images) == (f"{where}{OVER_IMAGES}; this request had 3 images: start vllm serve with "
                           "--limit-mm-per-prompt '{\"image\": 3}' or more")
    assert str(max_tokens) == (f"{where}{OVER_MAX_TOKENS}; lower the max_tokens of each reply below the server's "
                               "--max-model-len, or serve with a larger --max-model-len")
    assert str(context) == (f"{where}{OVER_CONTEXT}; this conversation does not fit the server's context: serve "
                            "with a larger --max-model-len")
    assert str(refused("no such model", LimitAdvice())) == f"{where}no such model"


def test_a_pipeline_roles_refusal_names_the_agent_settings_that_bound_the_request():
    where = "http://server/v1 (m): HTTP 400: "
    assert str(refused(OVER_IMAGES, PIPELINE_LIMITS)) == (
        f"{where}{OVER_IMAGES}; this request had 3 images: start vllm serve with --limit-mm-per-prompt "
        "'{\"image\": 3}' or more, or lower agent.max_zooms (a search sends up to max_zooms + 2 images in one request)")
    assert str(refused(OVER_MAX_TOKENS, PIPELINE_LIMITS)) == (
        f"{where}{OVER_MAX_TOKENS}; lower agent.reply_tokens (the max_tokens of each reply) below the server's "
        "--max-model-len, or serve with a larger --max-model-len")
    assert str(refused(OVER_CONTEXT, PIPELINE_LIMITS)) == (
        f"{where}{OVER_CONTEXT}; this conversation does not fit the server's context: serve with a larger "
        "--max-model-len, or lower resolutions or agent.max_steps")


def test_every_chat_role_of_a_pipeline_is_built_with_the_pipelines_limit_advice():
    config = load_config("llm-planner-vlm-tools")
    assert config.models.planner.limit_advice == PIPELINE_LIMITS
    assert ChatModelConfig(model="m").limit_advice == LimitAdvice()  # a model built elsewhere: the server's side
    with ScriptedServer([Reply(status=400, body=json.dumps({"error": {"message": OVER_IMAGES}}).encode())]) as server:
        with pytest.raises(ServerLimitError, match=r"or more, or lower agent\.max_zooms \(a search sends"):
            ask(chat_model(config.models.planner.model_copy(update={"base_url": server.url})),
                [ChatMessage("user", "look", [Image.new("RGB", (8, 8))] * 3)])
    assert len(server.requests) == 1  # never retried


def test_retry_after_header_sets_the_backoff_up_to_the_cap():
    model = OpenAIChat(ChatModelConfig(model="m", base_url="http://127.0.0.1:9/v1", max_backoff_seconds=10))
    told = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "3"}))
    greedy = SimpleNamespace(response=SimpleNamespace(headers={"retry-after": "3600"}))
    assert model._backoff(0, told) == 3.0
    assert model._backoff(0, greedy) == 10.0


def test_the_body_sent_is_the_request_each_image_part_encoded_once():
    """The bytes on the wire are `request`'s JSON (texts with quotes and accents, images in order, the schema
    in either structured-output form), built from image parts kept across calls."""
    frame, crop = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 255))
    messages = [ChatMessage("system", 'say "ok"'), ChatMessage("user", "où ?", [frame, crop]),
                ChatMessage("assistant", "{}"), ChatMessage("user", "again", [crop])]
    for structured in ("response_format", "vllm", "none"):
        model = OpenAIChat(ChatModelConfig(model="m", structured_output=structured))
        for schema in (None, Pick.model_json_schema()):
            assert json.loads(model.request_bytes(messages, 9, 0.5, schema)) == model.request(messages, 9, 0.5, schema)
    assert json.loads(model.request_bytes([], 9, 0.5, None)) == model.request([], 9, 0.5, None)


def test_requests_go_through_the_environment_proxy_unless_no_proxy_names_the_host(monkeypatch):
    with ScriptedServer([Reply("via proxy")]) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url.removesuffix("/v1"))
        monkeypatch.setenv("NO_PROXY", "")
        config = ChatModelConfig(model="m", base_url="http://model-server.invalid:8000/v1", max_retries=0, timeout=5)
        assert ask(chat_model(config)).text == "via proxy"
        monkeypatch.setenv("NO_PROXY", "model-server.invalid")
        with pytest.raises(ChatError, match=r"^http://model-server\.invalid:8000/v1 \(m\): gave up after 0 retries: "
                                            r"ClientConnectorDNSError"):
            ask(chat_model(config))
    assert len(proxy.requests) == 1


def test_a_model_used_by_several_asyncio_runs_leaves_no_open_session(recwarn, caplog):
    """Evaluation calls `asyncio.run` twice and never `aclose`: each run's session is closed as its loop ends,
    so nothing logs "Unclosed client session" (or warns of an open connection) when it is collected."""
    with ScriptedServer([Reply("one"), Reply("two")]) as server:
        model = chat_model(openai_config(server))
        assert [ask(model).text, ask(model).text] == ["one", "two"]
        del model
        gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
    assert [str(w.message) for w in recwarn if issubclass(w.category, ResourceWarning)] == []


class Pick(BaseModel):
    letter: str
    confidence: float


def test_json_schema_is_sent_as_response_format():
    with ScriptedServer([Reply('{"letter": "B", "confidence": 0.5}')]) as server:
        pick, completions = asyncio.run(complete_json(chat_model(openai_config(server)),
                                                      [ChatMessage("user", "pick")], Pick))
    assert pick == Pick(letter="B", confidence=0.5)
    assert len(completions) == 1
    assert server.requests[0]["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "Pick", "schema": Pick.model_json_schema()}}


def test_json_schema_is_sent_as_vllm_structured_outputs():
    with ScriptedServer([Reply('{"letter": "B", "confidence": 0.5}')]) as server:
        asyncio.run(complete_json(chat_model(openai_config(server, structured_output="vllm")),
                                  [ChatMessage("user", "pick")], Pick))
    assert server.requests[0]["structured_outputs"] == {"json": Pick.model_json_schema()}
    assert "response_format" not in server.requests[0]


def test_malformed_reply_gets_one_repair_attempt():
    with ScriptedServer([Reply('{"letter": "B"'), Reply('```json\n{"letter": "C", "confidence": 1}\n```')]) as server:
        pick, completions = asyncio.run(complete_json(chat_model(openai_config(server)),
                                                      [ChatMessage("user", "pick")], Pick))
    assert pick.letter == "C"
    assert len(completions) == 2
    repair = server.requests[1]["messages"]
    assert repair[1] == {"role": "assistant", "content": '{"letter": "B"'}
    assert repair[2]["content"].startswith("Your reply is not valid: reply: Invalid JSON")


def test_reply_still_malformed_after_repair_fails_with_the_reason():
    with ScriptedServer([Reply('{"letter": "B"}'), Reply("no")]) as server:
        with pytest.raises(ReplyError, match="malformed reply after one repair attempt") as failure:
            asyncio.run(complete_json(chat_model(openai_config(server)), [ChatMessage("user", "pick")], Pick))
    assert len(failure.value.completions) == 2


def test_rate_limiter_is_shared_by_every_role_on_one_endpoint():
    planner = ChatModelConfig(model="a", base_url="http://127.0.0.1:1/v1", requests_per_minute=2)
    reader = ChatModelConfig(model="b", base_url="http://127.0.0.1:1/v1", requests_per_minute=2)
    limiter = endpoint_limiter(planner)
    assert endpoint_limiter(reader) is limiter
    asyncio.run(limiter.acquire())
    asyncio.run(limiter.acquire())
    assert limiter._wait(limiter._requests[-1]) > 59  # a third request waits for the window


def test_missing_api_key_env_is_a_config_error(monkeypatch):
    monkeypatch.delenv("MMCOF_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="MMCOF_TEST_KEY"):
        chat_model(ChatModelConfig(model="m", api_key_env="MMCOF_TEST_KEY"))


def test_api_key_is_sent_but_never_in_the_config(monkeypatch):
    monkeypatch.setenv("MMCOF_TEST_KEY", "sk-secret-123")
    with ScriptedServer([Reply("ok")]) as server:
        config = openai_config(server, api_key_env="MMCOF_TEST_KEY")
        ask(chat_model(config))
    assert "sk-secret-123" not in json.dumps(config.model_dump())


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from tests.support.tiny_models import build_tiny_qwen25vl

    return build_tiny_qwen25vl(tmp_path_factory.mktemp("qwen"))


def test_transformers_chat_generates_for_a_message_with_an_image(tiny_qwen):
    model = chat_model(ChatModelConfig(backend="transformers", model=str(tiny_qwen), device="cpu"))
    frame = Image.new("RGB", (112, 84), (200, 30, 30))
    completion = asyncio.run(model.complete([ChatMessage("user", "What is written here?", [frame])], max_tokens=6))
    assert isinstance(completion.text, str)
    assert 1 <= completion.completion_tokens <= 6
    assert completion.prompt_tokens > 12  # the image's patch tokens are in the prompt
    assert completion.model == str(tiny_qwen)
    assert completion.gpu_seconds == 0.0  # on CPU there are no GPU-seconds to account


def test_transformers_chat_overrides_the_checkpoint_generation_config(tiny_qwen, tmp_path):
    """A checkpoint saved with repetition_penalty 1.05 and sampling on still decodes greedily without penalty."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path / "penalised"
    shutil.copytree(tiny_qwen, path)
    config = GenerationConfig.from_pretrained(path)
    config.update(repetition_penalty=1.05, do_sample=True, temperature=0.7, top_p=0.001, top_k=1)
    config.save_pretrained(path)
    model = chat_model(ChatModelConfig(backend="transformers", model=str(path), device="cpu"))
    seen = []
    generate = model.model.generate
    model.model.generate = lambda **kwargs: seen.append(kwargs) or generate(**kwargs)
    ask(model, [ChatMessage("user", "hi")], max_tokens=3)
    assert {k: seen[0][k] for k in ("do_sample", "repetition_penalty", "max_new_tokens")} == {
        "do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": 3}


def test_transformers_chat_hub_id_offline_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load transformers model 'no-such-org/no-such-vl-model'") as failure:
        chat_model(ChatModelConfig(backend="transformers", model="no-such-org/no-such-vl-model", device="cpu"))
    assert "\n" not in str(failure.value)
