"""An OpenAI-compatible chat-completions server on 127.0.0.1 that plays scripted replies.

The client, its retries and our parsing then run for real over HTTP; faults (429 with Retry-After,
5xx, slow replies, dropped connections, truncated bodies, invalid JSON) are scripted like replies.

    with ScriptedServer([Reply("<answer> A </answer>"), Reply(status=429, headers={"Retry-After": "1"})]) as server:
        client = openai.OpenAI(base_url=server.url, api_key="test")

One asyncio loop in a background thread serves every connection (HTTP/1.1 keep-alive, parsed by hand, each
reply written in one send): benchmarks run it on the same cores as the client, so its CPU per request must
stay small next to the client's. asyncio's transports set TCP_NODELAY, so no reply waits on a delayed ACK.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import responses

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
    given port (a server that starts late on the port a run was told), else a free one.
    """

    def __init__(self, script: Script, model: str = "scripted-model", port: int = 0):
        self.script = script
        self.model = model
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
            payload = completion_body(reply, body.get("model", self.model))
        else:
            payload = json.dumps({"error": {"message": f"scripted {reply.status}"}}).encode()
        head = response_head(reply.status, len(payload), reply.headers)
        writer.write(head + (payload[: len(payload) // 2] if reply.truncate else payload))
        await writer.drain()
        return keep_alive and not reply.truncate
