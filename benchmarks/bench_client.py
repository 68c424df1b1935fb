"""CPU per call of the project's chat client against the floor: a bare aiohttp POST and the plain openai SDK.

Run from the checkout: PYTHONPATH=. .venv/bin/python -m benchmarks.bench_client [--calls 1000] [--repeat 3]

The workload of a search step: chat completions with one 448-px PNG frame (a demo photo) and a JSON-schema
reply, 64 in flight, against the scripted OpenAI-compatible server in its own process (its CPU is not
counted). Each client makes its connections and sends the image once before the measured calls (a warm-up
of 64 calls), then CPU seconds of this process (every thread) over `--calls` calls are divided by the calls.
Clients take turns, `--repeat` rounds, and each one's median is printed with its ratio to the bare POST:

- **bare aiohttp**: the floor. The body's bytes are made once; each call POSTs them on a kept-alive pool of
  64 and reads the reply's text out of its JSON. No retries, no accounting, no validation.
- **openai SDK**: `AsyncOpenAI.chat.completions.create` with the messages and `response_format` as
  arguments, on the SDK's default transport with a pool of 64;
- **SDK + aiohttp**: the same on the SDK's own aiohttp transport (`openai.DefaultAioHttpClient`);
- **project**: `OpenAIChat.complete(..., json_schema=...)` (models/chat/openai_server.py) as the agent calls it.

No asserts: the machine is shared and noisy; numbers go to docs/speed.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing
import os
import statistics
import time

from PIL import Image

from mmcof_gen import resources
from mmcof_gen.models.chat import ChatMessage, ChatModelConfig, OpenAIChat, data_url

IN_FLIGHT = 64
SIDE = 448
MODEL = "bench-model"
SCHEMA = {"title": "Reading", "type": "object", "required": ["answer", "confidence"],
          "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}}}
REPLY = json.dumps({"answer": "a red sign reading STOP", "confidence": 0.9})


def serve(ready: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    """The scripted server, in its own process; it forgets the request bodies it keeps for tests."""
    from tests.support.scripted_server import Reply, ScriptedServer

    def script(_body: dict) -> Reply:
        server.requests.clear()
        server.headers.clear()
        return Reply(REPLY, prompt_tokens=300, completion_tokens=20)

    with ScriptedServer(script, model=MODEL) as server:
        ready.put(server.url)
        stop.wait()


def frame() -> Image.Image:
    with Image.open(resources.PHOTOS / "chelsea.jpg") as photo:
        return photo.convert("RGB").resize((SIDE, SIDE), Image.Resampling.LANCZOS)


def messages(image: Image.Image) -> list[ChatMessage]:
    return [ChatMessage("system", "You read signs in photos. Reply with JSON."),
            ChatMessage("user", "What does the sign say?", [image])]


async def gather_bounded(call, calls: int) -> None:
    semaphore = asyncio.Semaphore(IN_FLIGHT)

    async def one():
        async with semaphore:
            await call()

    await asyncio.gather(*(one() for _ in range(calls)))


async def bare_aiohttp(url: str, image: Image.Image, calls: int) -> float:
    import aiohttp

    model = OpenAIChat(ChatModelConfig(model=MODEL, base_url=url))
    body = json.dumps(model.request(messages(image), 128, 0.0, SCHEMA)).encode()
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def call():
            async with session.post(url + "/chat/completions", data=body,
                                    headers={"Content-Type": "application/json", "Authorization": "Bearer EMPTY"}) as r:
                text = json.loads(await r.read())["choices"][0]["message"]["content"]
            assert text == REPLY

        return await measured(call, calls)


async def openai_sdk(url: str, image: Image.Image, calls: int, transport: str = "httpx2") -> float:
    import httpx2
    import openai

    pool = httpx2.Limits(max_connections=None, max_keepalive_connections=IN_FLIGHT)
    http = (openai.DefaultAioHttpClient if transport == "aiohttp" else openai.DefaultAsyncHttpxClient)(limits=pool)
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, http_client=http)
    sent = OpenAIChat(ChatModelConfig(model=MODEL, base_url=url)).request(messages(image), 128, 0.0, SCHEMA)

    async def call():
        response = await client.chat.completions.create(model=MODEL, messages=sent["messages"], max_tokens=128,
                                                        temperature=0.0, top_p=1.0,
                                                        response_format=sent["response_format"])
        assert response.choices[0].message.content == REPLY

    try:
        return await measured(call, calls)
    finally:
        await client.close()


async def project(url: str, image: Image.Image, calls: int) -> float:
    model = OpenAIChat(ChatModelConfig(model=MODEL, base_url=url, max_concurrency=IN_FLIGHT))
    asked = messages(image)

    async def call():
        completion = await model.complete(asked, max_tokens=128, json_schema=SCHEMA)
        assert completion.text == REPLY and completion.prompt_tokens == 300

    try:
        return await measured(call, calls)
    finally:
        await model.aclose()


async def measured(call, calls: int) -> float:
    """CPU seconds of this process per call, after a warm-up that opens the pool."""
    await gather_bounded(call, IN_FLIGHT)
    start = time.process_time()
    await gather_bounded(call, calls)
    return (time.process_time() - start) / calls


CLIENTS = {"bare aiohttp": bare_aiohttp, "openai SDK": openai_sdk,
           "SDK + aiohttp": functools.partial(openai_sdk, transport="aiohttp"), "project": project}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    server = context.Process(target=serve, args=(ready, stop), daemon=True)
    server.start()
    try:
        url = ready.get(timeout=60)
        image = frame()
        body = len(json.dumps(OpenAIChat(ChatModelConfig(model=MODEL, base_url=url)).request(
            messages(image), 128, 0.0, SCHEMA)))
        print(f"{args.calls} calls x {args.repeat} rounds, {IN_FLIGHT} in flight, one {SIDE}x{SIDE} PNG "
              f"({len(data_url(image)) / 1e3:.0f} KB as a data URL, body {body / 1e3:.0f} KB), "
              f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        cpu = {name: [] for name in CLIENTS}
        for _ in range(args.repeat):
            for name, client in CLIENTS.items():
                cpu[name].append(asyncio.run(client(url, image, args.calls)))
        floor = statistics.median(cpu["bare aiohttp"])
        print(f"{'client':<14} {'CPU ms/call (median)':>21} {'/ bare aiohttp':>15}   runs (ms)")
        for name, runs in cpu.items():
            median = statistics.median(runs)
            print(f"{name:<14} {median * 1e3:>21.3f} {median / floor:>14.2f}x   "
                  f"{' '.join(f'{r * 1e3:.3f}' for r in runs)}")
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        stop.set()
        server.join(timeout=10)


if __name__ == "__main__":
    main()
