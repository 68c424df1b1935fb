#!/usr/bin/env bash
# `make test-verl`: verl's own RLHFDataset reads `export --format verl` (tests/test_rl_export.py, the tests that
# need MMCOF_VERL_PYTHON). verl's full dependency set (vLLM/SGLang, Ray, flash-attn) is not needed to read a
# dataset, so .venv-verl holds verl and only what `verl.utils.dataset.rl_dataset` and the zoom tool's image
# loader import, and sees the project venv's packages (torch, transformers, pyarrow) through a .pth file.
# Env: VERL_VENV (.venv-verl), PROJECT_VENV (.venv).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VERL_VENV:-.venv-verl}
PROJECT=${PROJECT_VENV:-.venv}
SPECS=("verl==0.9.1" "omegaconf==2.4.0" "antlr4-python3-runtime==4.9.3" "tensordict==0.15.3" "codetiming==1.4.0"
       "pyvers==0.2.3" "qwen-vl-utils==0.0.14")
STAMP="$VENV/.installed-verl-0.9.1"
if [ ! -f "$STAMP" ]; then
    test -x "$VENV/bin/python" || "$PROJECT/bin/python" -m venv "$VENV"
    site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    "$PROJECT/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" > "$site/project-venv.pth"
    "$VENV/bin/pip" install -q --no-deps "${SPECS[@]}"
    "$VENV/bin/python" -c "import verl.utils.dataset.rl_dataset, qwen_vl_utils; print('verl', __import__('verl').__version__)"
    touch "$STAMP"
fi
MMCOF_VERL_PYTHON="$(cd "$VENV" && pwd)/bin/python" "$PROJECT/bin/python" -m pytest -q tests/test_rl_export.py -k verls_rlhf_dataset
