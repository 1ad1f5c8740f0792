# conc-ml developer commands. `make demo` and `make test` work on a fresh machine with Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.demo-installed
# setuptools warns on every editable install of a project whose packages sit at the top of
# the repository (as here); the warning is advice, not a problem, and it is all a fresh
# clone's `make demo` would otherwise print before the demo.
PIP_INSTALL := PYTHONWARNINGS=ignore::UserWarning:setuptools.command.editable_wheel $(BIN)/python -m pip install --quiet

.PHONY: demo test lint typecheck check bench docs clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found; set PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python  ## everything a developer needs (tests, docs, lint, bench)
	$(PIP_INSTALL) -e '.[dev]'
	@touch $(STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python  ## only what `make demo` needs
	$(PIP_INSTALL) -e '.[demo]'
	@touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)  ## the main job: every decorated call in examples/ checked for parity and timed
	$(BIN)/python -m pytest --conc-bench examples/ -p no:cacheprovider -p no:benchmark

test: $(STAMP)  ## the test suite
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)  ## conc-ml next to its peers; see benchmarks/README.md
	$(BIN)/python -m benchmarks

docs: $(STAMP)
	$(BIN)/python -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) docs/_build .pytest_cache .mypy_cache .ruff_cache .conc_bench
