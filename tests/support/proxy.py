"""A recording pass-through proxy for tests against real OpenAI-compatible servers (vLLM, llama.cpp)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class RecordingProxy:
    """A pass-through HTTP proxy in front of the server that keeps every chat request body (what the client
    really sent, before the server fills anything in from the checkpoint's generation config) and every chat
    reply body as it came back (`replies`, bytes: a reply that is not JSON is kept as it is)."""

    def __init__(self, target: str):
        import http.server
        import threading

        self.bodies: list[dict] = []
        self.replies: list[bytes] = []
        origin = target.removesuffix("/v1")
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self, data: bytes | None) -> None:
                request = urllib.request.Request(origin + self.path, data=data, method=self.command,
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=300) as reply:
                        status, body = reply.status, reply.read()
                except urllib.error.HTTPError as exc:
                    status, body = exc.code, exc.read()
                if self.path.endswith("/chat/completions"):
                    proxy.replies.append(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                self._forward(None)

            def do_POST(self):
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.endswith("/chat/completions"):
                    proxy.bodies.append(json.loads(data))
                self._forward(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
