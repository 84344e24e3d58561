# labpipe: the two commands a newcomer needs are `make run` and `make test`.
#
# `make run`  installs everything into .venv and runs the main job on the embedded default
#             (SQLite, no Redis, default models): a demo plate is generated and processed.
# `make test` installs everything into .venv and runs the whole test suite.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint clean

install: $(STAMP)

# torch first, from the CPU build, so that pip never resolves torch itself (which would pull
# several GB of CUDA wheels); then the project with its test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/labpipe demo --out demo
	$(BIN)/labpipe process demo/plate.tif --sample DEMO-1
	$(BIN)/labpipe counts --sample DEMO-1

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo labpipe-data .pytest_cache
