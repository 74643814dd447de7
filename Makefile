# Everything runs in local virtualenvs. The main one (.venv) gets torch first, pinned to the
# CPU build that lies on this machine's disk: an unpinned install pulls a multi-GB CUDA build.
# The second one gets the newest torch release, which changes what the exporters emit; the
# architecture, exactness, interface and library-model tests run on it too. It lives outside
# the clone (a cache: a few GB that a new clone need not download again), and installs with
# no pip constraints file: this machine's global pip configuration caps torch at the
# releases it holds on disk, which is what the main venv wants and this one must not get.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TORCH := torch==2.13.0
NEWEST_VENV ?= $(HOME)/.cache/shaprewrite/venv-newest
NEWEST_STAMP := $(NEWEST_VENV)/.installed-stamp
NEWEST_TESTS := tests/test_architectures.py tests/test_exactness.py tests/test_families.py tests/test_recurrent.py \
	tests/test_batch_axis.py tests/test_interface.py tests/test_text_models.py tests/test_spectral.py \
	tests/test_rule_edges.py tests/test_libraries.py tests/ops
PYTEST := -m pytest -q -n 2 --dist loadfile

.PHONY: install test test-newest demo lint bench imports clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NEWEST_STAMP): pyproject.toml
	$(PYTHON) -m venv $(NEWEST_VENV)
	PIP_CONSTRAINT=/dev/null $(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=/dev/null $(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade torch
	PIP_CONSTRAINT=/dev/null $(NEWEST_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(NEWEST_STAMP)

test: install
	$(BIN)/python $(PYTEST)

test-newest: $(NEWEST_STAMP)
	@# The cached venv is shared by every clone: point its editable install at this one.
	PIP_CONSTRAINT=/dev/null $(NEWEST_VENV)/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(NEWEST_VENV)/bin/python -c "import torch; print('newest-torch leg: torch', torch.__version__)"
	$(NEWEST_VENV)/bin/python $(PYTEST) $(NEWEST_TESTS)

demo: install
	$(BIN)/python examples/explain_digits.py

lint: install
	$(BIN)/ruff check rewriter passes tests examples benchmarks

clean:
	rm -rf $(VENV) out .pytest_cache

imports: install
	$(BIN)/python tests/import_graph.py

bench: install
	$(BIN)/python benchmarks/exactness.py
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/speed.py
	$(BIN)/python benchmarks/explain.py
