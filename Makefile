# Everything runs in a local virtualenv (.venv). torch is installed first, pinned to the
# CPU build that lies on this machine's disk: an unpinned install pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0

.PHONY: install test demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: install
	$(BIN)/python examples/explain_resnet.py

lint: install
	$(BIN)/ruff check rewriter passes tests examples

clean:
	rm -rf $(VENV) out .pytest_cache

bench: install
	$(BIN)/python benchmarks/exactness.py
	$(BIN)/python benchmarks/run.py
