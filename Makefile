# Everything a fresh machine (Python 3.11+ with pip) needs: `make run`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.melcli-installed
RUNSTAMP = $(VENV)/.melcli-runtime

.PHONY: run test lint bench bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# make run needs melcli and its runtime dependencies only (a plain install: an editable one
# makes setuptools warn); make test adds the test and lint tools and installs it editable
$(RUNSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet .
	touch $(RUNSTAMP)

$(STAMP): $(RUNSTAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: install, extract sample_audio/ into feats.h5 (+ feats.json), then inspect it
run: $(RUNSTAMP)
	$(BIN)/melcli mel sample_audio/ -o feats.h5 --overwrite --sr 22050
	$(BIN)/melcli inspect feats.h5

## test: install, then run the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest -q

## lint: ruff (check + format check) and mypy
lint: $(STAMP)
	$(BIN)/ruff check melcli tests bench scripts
	$(BIN)/ruff format --check melcli tests bench scripts
	$(BIN)/mypy melcli

## bench: the full benchmark (docs/benchmarks.md), then the cluster rows (--scheduler with two
## local Dask workers against -j 2, docs/scaling.md); bench-quick: 10x smaller, under a minute.
## melcli's bytecode is compiled first, as `pip install` does: with PYTHONDONTWRITEBYTECODE
## set, an editable install would compile its changed modules at every run (~45 ms).
bench: $(STAMP)
	$(BIN)/python -m compileall -q melcli
	$(BIN)/python bench/run.py
	$(BIN)/python bench/scaling.py --only rows

bench-quick: $(STAMP)
	$(BIN)/python -m compileall -q melcli
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) feats.h5 feats.json .feats.h5.lock .feats.h5.melcli-work build *.egg-info .pytest_cache
