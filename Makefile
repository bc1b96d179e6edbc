# Two entry points (see README): `make demo` and `make test`. Both create
# the project's virtual environment on first use and keep it in step with
# the pinned requirements.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
# pytest-xdist workers for `make test` (tests/conftest.py groups the shared runs).
TEST_WORKERS ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.capatlas-installed

.PHONY: install demo test clean-demo

$(STAMP): requirements.txt requirements-nodeps.txt requirements-test.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

clean-demo:
	rm -rf results/demo
