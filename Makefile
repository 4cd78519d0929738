# The two commands a fresh machine needs (see README):
#   make demo   the main job: a local 3-member etcd cluster and whizorch on it
#   make test   the whole test suite (unit + integration on real etcd 3.5 and 3.4)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test lint bench bench-shards dev clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/whizorch demo $(ARGS)

test: setup
	VENV=$(VENV) bash scripts/test.sh

lint: setup
	$(BIN)/ruff check whizorch tests integration bench scripts examples
	$(BIN)/mypy
	MYPYPATH=bench $(BIN)/mypy --explicit-package-bases bench/*.py

bench: setup
	$(BIN)/python bench/bench_coord.py $(ARGS)

# issue 17's figures (about 10 minutes; docs/performance.md, "Shards"); bench_regress.py
# needs an earlier build of the engine and is run by hand (see its docstring)
bench-shards: setup
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_shards.py

dev: setup
	$(BIN)/python -m whizorch.dev $(ARGS)

clean:
	rm -rf $(VENV) $(VENV)-* build *.egg-info
