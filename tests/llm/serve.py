"""A small OpenAI-compatible server of a GGUF chat model, run by transformers in this process, that can only
reply what the request's JSON schema enumerates (run with the project's python; tests/llm/stage.sh).

The chooser's replies (agent/candidates.py) are a few dozen whole JSON objects: an action, a place and a
candidate number there from an enum, an answer from an enum, or a locate with a free phrase. Each request's schema is turned
into those replies, tokenized into a trie, and decoding is greedy over the trie: at each branch the model's
most likely allowed token, where only one token is allowed it is taken without asking; a free phrase is decoded
freely up to its closing quote. Checking a trie of a few dozen replies costs nothing next to a forward pass,
whatever the vocabulary (llama.cpp's grammar checks every token of the vocabulary at every step). The KV cache
of the previous request is reused for the prefix the next shares with it (a search's conversation grows).
Requests without a schema are answered by plain greedy decoding.

Usage: python tests/llm/serve.py --gguf DIR/FILE.gguf --model NAME --port PORT [--threads N]
"""

from __future__ import annotations

import argparse
import http.server
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FREE_TOKENS = 16  # a free phrase (locate's) is cut here; the schema bounds it to 40 characters


def replies(schema: dict) -> tuple[list[str], list[str]]:
    """The whole replies a chooser's schema allows, and the openings of those that end in a free string."""
    whole, opened = [], []
    for variant in schema.get("anyOf", [schema]):
        texts = ['{']
        for index, (name, spec) in enumerate(variant["properties"].items()):
            head = (", " if index else "") + json.dumps(name) + ": "
            if "const" in spec or "enum" in spec:
                values = [spec["const"]] if "const" in spec else spec["enum"]
                texts = [text + head + json.dumps(value) for text in texts for value in values]
            else:  # a free string: the last property of its variant
                opened += [text + head + '"' for text in texts]
                texts = []
        whole += [text + "}" for text in texts]
    return whole, opened


class Trie:
    def __init__(self):
        self.children: dict[int, Trie] = {}
        self.opens = False  # a free string starts after this token

    def add(self, tokens: list[int], opens: bool) -> None:
        node = self
        for token in tokens:
            node = node.children.setdefault(token, Trie())
        node.opens = opens


class Server:
    def __init__(self, gguf: Path, threads: int):
        torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        self.model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                          dtype=torch.float32).eval()
        self.end = self.tokenizer.eos_token_id
        self.cached: list[int] = []  # the tokens the cache holds
        self.cache = None

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        """Feeds `tokens` after the cached ones; the logits of the last."""
        out = self.model(input_ids=torch.tensor([tokens]), cache=self.cache, use_cache=True)
        self.cache = out.cache
        self.cached += tokens
        return out.logits[0, -1]

    def _prefill(self, prompt: list[int]) -> torch.Tensor:
        shared = 0
        while shared < min(len(prompt) - 1, len(self.cached)) and prompt[shared] == self.cached[shared]:
            shared += 1
        if shared and self.cache is not None:
            if shared < len(self.cached):
                self.cache.crop(shared - len(self.cached))  # transformers 5: minus the tokens to drop
            self.cached = self.cached[:shared]
        else:
            self.cache, self.cached = None, []
        return self._forward(prompt[shared:])

    def _free(self, logits: torch.Tensor, limit: int) -> list[int]:
        tokens = []
        for _ in range(limit):
            token = int(logits.argmax())
            if token == self.end:
                break
            tokens.append(token)
            if '"' in self.tokenizer.decode(tokens) or "\n" in self.tokenizer.decode(tokens):
                break
            logits = self._forward([token])
        return tokens

    def generate(self, messages: list[dict], schema: dict | None, max_tokens: int) -> tuple[str, int, int]:
        """(reply, prompt tokens, completion tokens)."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"]
        with torch.inference_mode():
            logits = self._prefill(prompt)
            if schema is None:
                tokens = self._free(logits, max_tokens)
                return self.tokenizer.decode(tokens, skip_special_tokens=True), len(prompt), len(tokens)
            whole, opened = replies(schema)
            trie = Trie()
            for text in whole:
                trie.add(self.tokenizer.encode(text, add_special_tokens=False) + [self.end], False)
            for text in opened:
                trie.add(self.tokenizer.encode(text, add_special_tokens=False), True)
            node, tokens, forced = trie, [], []
            while node.children:
                if len(node.children) == 1:  # no choice: taken without asking the model
                    token = next(iter(node.children))
                else:
                    if forced:
                        logits = self._forward(forced)
                        forced = []
                    allowed = list(node.children)
                    token = allowed[int(logits[allowed].argmax())]
                tokens.append(token)
                node = node.children[token]
                if token != self.end:
                    forced.append(token)
            text = self.tokenizer.decode([t for t in tokens if t != self.end])
            if node.opens:
                logits = self._forward(forced) if forced else logits
                free = self._free(logits, FREE_TOKENS)
                phrase = self.tokenizer.decode(free).split('"')[0].split("\n")[0].strip()[:40]
                text += json.dumps(phrase)[1:] + "}"
                tokens += free
            return text, len(prompt), len(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--model", required=True, help="the served model name")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    server = Server(args.gguf, args.threads)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self._send(200, {"object": "list", "data": [{"id": args.model, "object": "model"}]})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            form = body.get("response_format") or {}
            schema = form.get("schema") or form.get("json_schema", {}).get("schema")
            start = time.perf_counter()
            text, prompt, completion = server.generate(body["messages"], schema, body.get("max_tokens") or 256)
            print(f"{time.perf_counter() - start:.2f}s {prompt}+{completion} tokens: {text}", flush=True)
            self._send(200, {"id": "chatcmpl-local", "object": "chat.completion", "created": int(time.time()),
                             "model": args.model, "seconds": round(time.perf_counter() - start, 3),
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                                       "total_tokens": prompt + completion}})

        def log_message(self, *args):
            pass

    print(f"serving {args.model} on 127.0.0.1:{args.port}", flush=True)
    http.server.HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
