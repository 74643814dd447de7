# Everything runs in local virtualenvs. The main one (.venv) gets torch first, pinned to the
# CPU build that lies on this machine's disk: an unpinned install pulls a multi-GB CUDA build.
# The second one (.venv-newest) gets the newest torch release, which changes what the
# exporters emit; the architecture and exactness tests run on it too.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0
NEWEST_VENV ?= .venv-newest
NEWEST_STAMP := $(NEWEST_VENV)/.installed-stamp
NEWEST_TESTS := tests/test_architectures.py tests/test_exactness.py tests/test_families.py tests/test_recurrent.py \
	tests/test_batch_axis.py
PYTEST := -m pytest -q -n 2 --dist loadfile

.PHONY: install test test-newest demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NEWEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade torch
	$(NEWEST_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(NEWEST_STAMP)

test: install
	$(BIN)/python $(PYTEST)

test-newest: $(NEWEST_STAMP)
	$(NEWEST_VENV)/bin/python $(PYTEST) $(NEWEST_TESTS)

demo: install
	$(BIN)/python examples/explain_digits.py

lint: install
	$(BIN)/ruff check rewriter passes tests examples benchmarks

clean:
	rm -rf $(VENV) $(NEWEST_VENV) out .pytest_cache

bench: install
	$(BIN)/python benchmarks/exactness.py
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/explain.py
