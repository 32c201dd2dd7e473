# Two commands do everything on a fresh Debian/Ubuntu machine with Python 3.11:
#   make demo   - set up, then run configs/quick.toml and compare the methods
#   make test   - set up, then run the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
OUT ?= runs/quick

.PHONY: setup setup-dev data demo test clean

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

# The pinned CPU build of torch goes in first, so the project's torch range is
# already satisfied and pip never reaches for a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# Test tools, and flwr-datasets whose partitioners the tests compare ours with.
$(VENV)/.installed-dev: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

data:
	@bash scripts/install-data.sh

demo: setup data
	$(BIN)/fedticket run configs/quick.toml --out $(OUT)
	$(BIN)/fedticket compare $(OUT)

test: setup-dev data
	$(BIN)/python -m pytest
	$(BIN)/ruff check src tests benchmarks examples scripts
	$(BIN)/mypy src

clean:
	rm -rf runs .pytest_cache
