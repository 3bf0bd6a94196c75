# The two commands a newcomer needs: `make run` and `make test`. Both create or reuse .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run demo test bench gpu-check fuzz base-model

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

base-model: $(STAMP)
	$(VENV)/bin/das fetch-base

run: base-model
	$(VENV)/bin/das serve

demo: base-model
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
