# The two commands a newcomer needs: `make run` and `make test`. Both create or reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# `make run` installs what serving needs (the package and its client); `make test` adds the test, lint and s3 tools.
SERVE_STAMP := $(VENV)/.serve-stamp
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test bench gpu-check fuzz base-model serve-model

$(SERVE_STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -e . -e ./client
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP) pyproject.toml client/pyproject.toml
	$(PIP) -e '.[dev]' -e ./client
	touch $(STAMP)

serve-model: $(SERVE_STAMP)
	$(VENV)/bin/das fetch-base

base-model: $(STAMP)
	$(VENV)/bin/das fetch-base

run: serve-model
	$(VENV)/bin/das serve

demo: serve-model
	$(VENV)/bin/das demo

test: base-model
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: base-model
	$(PY) bench/train_step.py

gpu-check: base-model  # on a GPU machine; DEVICE=cpu runs the same check on the CPU
	$(PY) bench/gpu_check.py --device $(or $(DEVICE),cuda)

fuzz: base-model  # schemathesis over the whole API of a real server, three ways of auth
	bash scripts/fuzz_api.sh
