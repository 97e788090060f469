# Two entry points for a fresh machine:  `make serve`  and  `make test`.
# stdout of `make serve` is the MCP channel, so every install step writes to stderr only.
MAKEFLAGS += --no-print-directory
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch first: sentence-transformers would otherwise pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1

.PHONY: install serve test lint bench

$(BIN)/.rift-installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) 1>&2
	@$(BIN)/python -m pip install -q --upgrade pip 1>&2
	@$(BIN)/python -m pip show torch >/dev/null 2>&1 || $(BIN)/python -m pip install -q "$(TORCH_SPEC)" 1>&2
	@$(BIN)/python -m pip install -q -e '.[dev]' 1>&2
	@touch $@

install: $(BIN)/.rift-installed

serve: install
	@exec $(BIN)/rift serve

test: install
	@$(BIN)/ruff check server tools tests
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	@$(BIN)/ruff check server tools tests
