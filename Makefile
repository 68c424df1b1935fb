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

.PHONY: demo test test-vllm test-llm install-test clean

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
	$(BIN)/mmcof-gen view $(DEMO)/run --out $(DEMO)/report.html
	@echo "Run folder: $(DEMO)/run (trajectories.jsonl, errors.jsonl, manifest.json)"
	@echo "Training data (LLaMA-Factory ShareGPT): $(DEMO)/export"
	@echo "Report: $(DEMO)/report.html"

# The tests, then the wheel as users install it (tests/wheel_smoke.py): its demo chain, run from a folder
# outside the checkout, must give the counts `make demo` gives (here into build/check/demo, made afresh).
test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q
	rm -rf $(CHECK)
	$(MAKE) --no-print-directory demo DEMO=$(CHECK)/demo
	$(BIN)/python tests/wheel_smoke.py --reference $(CHECK)/demo

# The tests marked vllm against a real vLLM server (CPU build in .venv-vllm, tiny random Qwen2.5-VL): docs/vllm.md
test-vllm: $(VENV)/.installed-test
	tests/vllm/stage.sh

# A real text LLM (SmolLM2-135M-Instruct GGUF, llama-cpp-python server in .venv-llm) chooses over RapidOCR: docs/planner.md
test-llm: $(VENV)/.installed-test
	tests/llm/stage.sh

clean:
	rm -rf $(VENV) .venv-wheel .venv-vllm .venv-llm $(DEMO) $(CHECK)
