"""An OpenAI-compatible chat-completions server on 127.0.0.1 that plays scripted replies.

The client, its retries and our parsing then run for real over HTTP; faults (429 with Retry-After,
5xx, slow replies, dropped connections, truncated bodies, invalid JSON) are scripted like replies.

    with ScriptedServer([Reply("<answer> A </answer>"), Reply(status=429, headers={"Retry-After": "1"})]) as server:
        client = openai.OpenAI(base_url=server.url, api_key="test")

With a `PrefixCache`, the server also counts what a vLLM server with prefix caching would (prompt tokens, prefix-
cache and image-cache queries and hits) and serves them on `GET /metrics` under vLLM's names, exactly.

One asyncio loop in a background thread serves every connection (HTTP/1.1 keep-alive, parsed by hand, each
reply written in one send): benchmarks run it on the same cores as the client, so its CPU per request must
stay small next to the client's. asyncio's transports set TCP_NODELAY, so no reply waits on a delayed ACK.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import responses

from PIL import Image

BACKLOG = 1024  # a deep listen backlog: hundreds of clients connect at once in load tests


@dataclass
class Reply:
    """One scripted answer to one request."""

    content: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0               # seconds before answering (a slow model, or a timeout)
    drop: bool = False               # close the connection without answering
    truncate: bool = False           # send half of the body, then close
    body: bytes | None = None        # raw body instead of a completion (e.g. invalid JSON)
    prompt_tokens: int = 10
    completion_tokens: int = 5


Script = list[Reply] | Callable[[dict], Reply]


class PrefixCache:
    """The accounting of a serving engine with prefix caching, made exact for tests and benchmarks.

    A request's tokens: per message a role token, then its content in order: an image as Qwen2.5-VL's count of
    tokens (one per 28x28 pixels), each named by the image's bytes, and text as its words. A request's prefix-
    cache hits are the tokens of its longest prefix that an earlier request, or an earlier request followed by
    its reply (an engine keeps the KV cache of the tokens it generated), began with; its image-cache hits
    the images an earlier request sent. The cache never forgets (a test's run is far smaller than a server's
    cache), so the totals do not depend on the order in which concurrent requests arrive: the tokens computed
    are the distinct prefixes of all requests, the images encoded the distinct images. (vLLM differs in
    counting whole blocks of tokens, and in computing the last token of a request sent twice.)
    """

    PATCH = 28

    def __init__(self):
        self.prefixes: set[int] = set()  # hash of every prefix of every request so far
        self.images: set[str] = set()
        self.counts = {"prompt_tokens": 0, "generation_tokens": 0, "prefix_cache_queries": 0,
                       "prefix_cache_hits": 0, "mm_cache_queries": 0, "mm_cache_hits": 0, "request_success": 0}

    def tokens(self, body: dict) -> list[tuple]:
        out: list[tuple] = []
        for message in body.get("messages", []):
            out.append(("<role>", message.get("role")))
            content = message.get("content")
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
            for part in parts:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    width, height = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).size
                    out += [("<image>", url, k) for k in range(math.ceil(width / self.PATCH)
                                                                * math.ceil(height / self.PATCH))]
                else:
                    out += [(word,) for word in part.get("text", "").split()]
        return out

    def record(self, body: dict, reply: str) -> int:
        """Count one request answered with `reply`; its prompt tokens."""
        tokens = self.tokens(body)
        hits, chain = 0, 0
        for token in tokens:
            chain = hash((chain, token))
            hits += chain in self.prefixes  # a prefix seen before: so were all of its own prefixes
            self.prefixes.add(chain)
        for token in self.tokens({"messages": [{"role": "assistant", "content": reply}]}):
            chain = hash((chain, token))
            self.prefixes.add(chain)
        images = list(dict.fromkeys(t[1] for t in tokens if t[0] == "<image>"))
        counts = self.counts
        counts["prompt_tokens"] += len(tokens)
        counts["prefix_cache_queries"] += len(tokens)
        counts["prefix_cache_hits"] += hits
        counts["mm_cache_queries"] += len(images)
        counts["mm_cache_hits"] += sum(url in self.images for url in images)
        self.images.update(images)
        return len(tokens)

    def metrics(self, model: str) -> bytes:
        """The counters in Prometheus' text format, named as vLLM names them."""
        return "".join(f'vllm:{name}_total{{model_name="{model}"}} {value}.0\n'
                       for name, value in self.counts.items()).encode()


def planner_steps(body: dict) -> int:
    """How many actions the planner of this conversation has taken: its assistant turns that carry an action
    (its first turn names the search targets, which is not an action)."""
    return sum(m["role"] == "assistant" and '"action"' in m["content"] for m in body["messages"])


def completion_body(reply: Reply, model: str) -> bytes:
    return json.dumps({
        "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": reply.content}}],
        "usage": {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
                  "total_tokens": reply.prompt_tokens + reply.completion_tokens},
    }).encode()


def response_head(status: int, length: int, headers: dict[str, str]) -> bytes:
    """Status line and headers of a JSON response, up to and including the blank line."""
    lines = [f"HTTP/1.1 {status} {responses.get(status, '')}", "Content-Type: application/json",
             f"Content-Length: {length}", *(f"{key}: {value}" for key, value in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class ScriptedServer:
    """Serves `script` (a list played in order, or a function of the request body) until stopped.

    `requests` records every request body received, in arrival order; `headers` the HTTP headers of each
    (names lower-cased). A script function is called on the server's loop, one request at a time. `port`: a
    given port (a server that starts late on the port a run was told), else a free one. `cache`: count the
    requests answered 200 as a prefix-caching engine would, served on /metrics (their replies' usage then
    gives the counted prompt tokens).
    """

    def __init__(self, script: Script, model: str = "scripted-model", port: int = 0, cache: PrefixCache | None = None):
        self.script = script
        self.model = model
        self.cache = cache
        self.requests: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self._socket = socket.create_server(("127.0.0.1", port))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}/v1"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._connections: set[asyncio.Task] = set()

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, sock=self._socket, backlog=BACKLOG))
        return self

    def __exit__(self, *exc) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _call(self, coroutine):
        """Run `coroutine` on the server's loop (its own thread) and wait for the result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _stop(self) -> None:
        self._server.close()
        for connection in self._connections:
            connection.cancel()
        await asyncio.gather(*self._connections)
        await self._server.wait_closed()

    def _next(self, body: dict, headers: dict[str, str]) -> Reply:
        self.requests.append(body)
        self.headers.append(headers)
        if callable(self.script):
            return self.script(body)
        if not self.script:
            return Reply(status=500, body=b'{"error": {"message": "script exhausted"}}')
        return self.script.pop(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: requests answered in turn until the client or a scripted fault closes it."""
        connection = asyncio.current_task()
        self._connections.add(connection)
        try:
            while await self._answer(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client that timed out or was killed, or the server stopping: expected
        finally:
            self._connections.discard(connection)
            writer.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; whether the connection stays open for the next one."""
        request_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        raw = await reader.readexactly(int(headers.get("content-length", 0)))
        keep_alive = headers.get("connection", "").lower() != "close"
        if request_line.startswith("GET /metrics") and self.cache is not None:
            payload = self.cache.metrics(self.model)
            writer.write(response_head(200, len(payload), {}) + payload)
            await writer.drain()
            return keep_alive
        if request_line.startswith("GET "):
            payload = json.dumps({"object": "list", "data": [{"id": self.model, "object": "model"}]}).encode()
            writer.write(response_head(200, len(payload), {}) + payload)
            await writer.drain()
            return keep_alive
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {}
        reply = self._next(body, headers)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.drop:
            return False
        if reply.body is not None:
            payload = reply.body
        elif reply.status == 200:
            if self.cache is not None:
                reply = dataclasses.replace(reply, prompt_tokens=self.cache.record(body, reply.content))
                self.cache.counts["generation_tokens"] += reply.completion_tokens
                self.cache.counts["request_success"] += 1
            payload = completion_body(reply, body.get("model", self.model))
        else:
            payload = json.dumps({"error": {"message": f"scripted {reply.status}"}}).encode()
        head = response_head(reply.status, len(payload), reply.headers)
        writer.write(head + (payload[: len(payload) // 2] if reply.truncate else payload))
        await writer.drain()
        return keep_alive and not reply.truncate
