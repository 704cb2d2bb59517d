# `make demo` and `make test` each set everything up on a fresh machine with Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS := diffusion,dev,docs

.PHONY: demo test lint format types docs serve-docs wheel-smoke suite bench lock

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/mlem-jax demo --out-dir demo_output

# Lint, types, the documentation, the wheel installed outside the checkout, the suite.
test: lint types docs wheel-smoke suite

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

types: $(BIN)/.installed
	$(BIN)/pyright -p .

docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

serve-docs: $(BIN)/.installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

wheel-smoke: $(BIN)/.installed
	PYTHON=$(PYTHON) .ci/wheel-smoke

# One worker per core, up to 4 (compilation is mostly single-threaded).
suite: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n auto --maxprocesses=4

bench: $(BIN)/.installed
	$(BIN)/python bench/bench_core.py

# Rewrite constraints.txt with the newest versions of everything the extras need.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q '.[$(EXTRAS)]'
	{ sed -n '1,2p' constraints.txt; .lock-venv/bin/python -m pip freeze --exclude mlem-jax; } \
		> constraints.new && mv constraints.new constraints.txt
	rm -rf .lock-venv
