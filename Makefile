# Two entry points for a fresh machine:  `make serve`  and  `make test`.
# stdout of `make serve` is the MCP channel, so every install step writes to stderr only.
MAKEFLAGS += --no-print-directory
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch first: sentence-transformers would otherwise pull a multi-GB CUDA build.
# On a machine without nvidia-smi the PyTorch CPU index is added when it answers: PyPI's Linux torch is the
# CUDA build, and 2.13.0+cpu sorts above 2.13.0, so pip takes the CPU wheel. Where that index is out of reach
# (an offline mirror), the spec resolves from the configured indexes alone.
TORCH_SPEC ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export HF_HUB_OFFLINE ?= 1

.PHONY: install install-dev serve test lint

$(BIN)/.rift-installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) 1>&2
	@$(BIN)/python -m pip install -q --upgrade pip 1>&2
	@$(BIN)/python -m pip show torch >/dev/null 2>&1 || { \
	  if ! command -v nvidia-smi >/dev/null 2>&1 && $(BIN)/python -c "import urllib.request as u; \
	    u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10)" >/dev/null 2>&1; then \
	    $(BIN)/python -m pip install -q "$(TORCH_SPEC)" --extra-index-url "$(TORCH_CPU_INDEX)" 1>&2; \
	  else $(BIN)/python -m pip install -q "$(TORCH_SPEC)" 1>&2; fi; }
	@$(BIN)/python -m pip install -q -e . 1>&2
	@touch $@

# The test and benchmark tools (pytest, ruff, onnx, matplotlib, ...): `make test` needs them, `make serve` does not.
$(BIN)/.rift-dev-installed: $(BIN)/.rift-installed
	@$(BIN)/python -m pip install -q -e '.[dev]' 1>&2
	@touch $@

install: $(BIN)/.rift-installed

install-dev: $(BIN)/.rift-dev-installed

serve: install
	@exec $(BIN)/rift serve

test: install-dev
	@$(BIN)/ruff check server tools tests
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install-dev
	@$(BIN)/ruff check server tools tests
