# Two commands from a fresh clone:  `make quickstart`  and  `make test`.  Both install first.
# `make test-fast` leaves out the tests that start Ray, training, a download, a child process or a browser.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.poolsieve-installed

.PHONY: install quickstart test test-fast lint clean

install: $(STAMP)

# torch/torchvision are pinned here (the builds on this machine's disk); pyproject keeps ranges.
$(STAMP): pyproject.toml .ci/system-deps
	.ci/system-deps
	@avail=$$(df -Pk . | awk 'NR==2 {print $$4}'); if [ "$$avail" -lt 9437184 ]; then \
	  echo "make install: warning: $$((avail / 1048576)) GiB free here; the venv (CUDA build of torch) takes about 7 GiB" >&2; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir --upgrade pip
	$(BIN)/pip install -q --no-cache-dir torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --no-cache-dir -e ".[dev]"
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/poolsieve quickstart --workspace poolsieve-quickstart

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder --durations=20 tests

test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf poolsieve-quickstart .pytest_cache
