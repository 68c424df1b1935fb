"""What a vLLM server says about itself, asked before a run starts: its version (`/version`), the names it
serves with their context length (`/v1/models`), and whether it accepts as many images in one request as
a search sends. A served name it does not know, a reply budget over its context or an image limit below
the search's are refused here, in one line, before any record is written; what it said goes into the
run manifest.

Servers that do not answer `/version` with a version (OpenAI, other proxies) are not asked anything more:
their refusals surface in the run itself (models/chat/refusals.py names the setting for each). A server that does not
answer at all is refused first, naming the role, the URL and the command the pipeline's header gives to start
it; `--wait-for-servers SECONDS` polls until every server answers, for runs started before their servers.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mmcof_gen.errors import ConfigError
from mmcof_gen.models.chat import ChatMessage, ChatModelConfig, IMAGE_LIMIT, openai_messages

TIMEOUT = 10.0  # seconds per question; a server that does not answer in time is asked nothing more

# the probe's image: the smallest a Qwen2-VL-style processor takes without complaint
PROBE_SIDE = 28
POLL_SECONDS = 1.0  # --wait-for-servers asks a server that does not answer again this often


def _request(url: str, config: ChatModelConfig, body: dict | None = None) -> tuple[int, object]:
    """(status, parsed JSON body or None) of a GET, or a POST of `body`; (0, None) when unreachable."""
    headers = {"Content-Type": "application/json"}
    if config.api_key_env and os.environ.get(config.api_key_env):
        headers["Authorization"] = f"Bearer {os.environ[config.api_key_env]}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=min(TIMEOUT, config.timeout)) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


def server_info(config: ChatModelConfig) -> dict | None:
    """{"version", "models": {served name: max_model_len}} of a vLLM server; None for any other server."""
    root = config.base_url.rstrip("/").removesuffix("/v1")
    status, version = _request(f"{root}/version", config)
    if status != 200 or not isinstance(version, dict) or not isinstance(version.get("version"), str):
        return None
    status, listing = _request(f"{config.base_url.rstrip('/')}/models", config)
    data = listing.get("data") if status == 200 and isinstance(listing, dict) else None
    models = {entry["id"]: entry.get("max_model_len") for entry in data or [] if isinstance(entry, dict) and "id" in entry}
    return {"version": version["version"], "models": models}


def check_served(info: dict, config: ChatModelConfig, key: str, reply_tokens: int, reply_key: str) -> None:
    """The served name exists and a reply of `reply_tokens` fits its context; else a ConfigError naming `key`."""
    if config.model not in info["models"]:
        offered = ", ".join(sorted(info["models"])) or "no models"
        raise ConfigError(f"{key}: {config.base_url} does not serve {config.model!r}; its /v1/models offers: "
                          f"{offered}")
    max_model_len = info["models"][config.model]
    if isinstance(max_model_len, int) and reply_tokens >= max_model_len:
        raise ConfigError(f"{reply_key} ({reply_tokens}) must be below the max_model_len ({max_model_len}) of "
                          f"{config.model!r} at {config.base_url}; lower it, or serve with a larger --max-model-len")


def check_images(config: ChatModelConfig, images: int, key: str) -> None:
    """One request of `images` tiny images and a one-token reply: a server whose image limit is lower says so."""
    from PIL import Image

    probe = [Image.new("RGB", (PROBE_SIDE, PROBE_SIDE), (i * 40 % 256, 128, 64)) for i in range(images)]
    body = {"model": config.model, "max_tokens": 1, "temperature": 0.0,
            "messages": openai_messages([ChatMessage("user", "ok", probe)])}
    status, reply = _request(f"{config.base_url.rstrip('/')}/chat/completions", config, body)
    error = reply.get("error", reply) if isinstance(reply, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if status == 400 and isinstance(message, str) and IMAGE_LIMIT in message:
        raise ConfigError(f"{key}: {config.base_url} refuses {images} images in one request ({message!r}); start "
                          f"vllm serve with --limit-mm-per-prompt '{{\"image\": {images}}}' or more, or lower "
                          "agent.max_zooms (a search sends up to max_zooms + 2 images in one request)")


def reachable(config: ChatModelConfig) -> bool:
    """Whether anything answers HTTP at the model's base URL (any status: a 401 or a 404 is a server)."""
    return _request(f"{config.base_url.rstrip('/')}/models", config)[0] != 0


def server_command(pipeline: Path | None, base_url: str) -> str | None:
    """The command that the header comment of the pipeline YAML gives for the server at `base_url` (the
    indented command line with its `--port`, continuation lines joined), or None when it gives none."""
    if pipeline is None:
        return None
    header = []
    for line in pipeline.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line[1:])
    commands, joined = [], None
    for text in header:
        if joined is None and not text.startswith("  "):
            continue
        joined = (joined + " " if joined else "") + text.strip().removesuffix("\\").strip()
        if not text.rstrip().endswith("\\"):
            commands.append(joined)
            joined = None
    port = urllib.parse.urlsplit(base_url).port
    return next((c for c in commands if re.search(rf"--port[ =]{port}\b", c)), None)


def await_servers(roles: dict[str, ChatModelConfig], wait_seconds: float, pipeline: Path | None) -> None:
    """Every server of `roles` answers, asked again every POLL_SECONDS for up to `wait_seconds`; else a
    ConfigError naming the first that does not: its role, its URL and how to start it."""
    first: dict[str, tuple[str, ChatModelConfig]] = {}
    for role, model in roles.items():
        first.setdefault(model.base_url, (role, model))
    deadline = time.monotonic() + wait_seconds
    while True:
        down = [(role, model) for role, model in first.values() if not reachable(model)]
        if not down:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
    role, model = down[0]
    waited = f" within {wait_seconds:g} s" if wait_seconds else ""
    command = server_command(pipeline, model.base_url)
    start = f"start it first ({command})" if command else "start its server first (or check the URL)"
    raise ConfigError(f"models.{role}: no server answers at {model.base_url}{waited}; {start}, or pass "
                      "--wait-for-servers SECONDS to wait for it")
