# Two commands from a fresh clone:  `make quickstart`  and  `make test`.  Both install first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.poolsieve-installed

.PHONY: install quickstart test lint clean

install: $(STAMP)

# torch/torchvision are pinned here (the builds on this machine's disk); pyproject keeps ranges.
$(STAMP): pyproject.toml .ci/system-deps
	.ci/system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/poolsieve quickstart --workspace poolsieve-quickstart

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf poolsieve-quickstart .pytest_cache
