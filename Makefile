# labpipe: the two commands a newcomer needs are `make run` and `make test`.
#
# `make run`  installs everything into .venv and runs the main job on the embedded default
#             (SQLite, no Redis, default models): `labpipe serve` with a demo plate in its inbox.
# `make test` installs everything into .venv and runs the whole test suite.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint clean browser

install: $(STAMP)

# torch first, from the CPU build, so that pip never resolves torch itself (which would pull
# several GB of CUDA wheels); then the project with its test tools.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo plate goes into the inbox under the sample folder DEMO-1; `labpipe serve` then picks it
# up, processes it and serves the web UI at http://127.0.0.1:8000/ (Ctrl-C stops it). On first start it
# makes the login token (kept in labpipe-data/state/api-token) and prints it with the address.
run: install
	$(BIN)/labpipe demo --out demo
	mkdir -p labpipe-data/inbox/DEMO-1
	cp demo/plate.tif labpipe-data/inbox/DEMO-1/demo-plate.tif
	$(BIN)/labpipe serve

# The browser tests drive Debian's chromium (never a browser downloaded by Playwright).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Two pytest-xdist workers (the CI machine's two cores): many tests wait on daemons, leases and the
# browser rather than compute. tests/conftest.py keeps the workers apart (own PostgreSQL databases,
# own Redis database numbers, the Redis tests on one worker). `make test PYTEST_WORKERS=0` runs serially.
PYTEST_WORKERS ?= 2

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadgroup

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo labpipe-data .pytest_cache
