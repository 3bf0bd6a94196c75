# The two commands a newcomer needs: `make run` and `make test`. Both create or reuse .venv and install exactly the
# locked versions in requirements/ (hashes checked, no resolver); `make lock` refreshes them from a tested install of
# the newest versions pyproject.toml allows (`make test-latest`). docs/dependencies.md says why and how.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --quiet --disable-pip-version-check
# `make run` installs what serving needs (the package and its client); `make test` adds the test, lint and s3 tools.
SERVE_STAMP := $(VENV)/.serve-stamp
STAMP := $(VENV)/.installed-stamp
# uv resolves for test-latest and lock only (pip's resolver spends minutes backtracking over boto versions)
UV_VERSION := 0.13.9
TOOLS := .venv-tools
UV := $(TOOLS)/bin/uv
LATEST := .venv-latest
# uv reads no pip config: hand it pip's wheel folder where one is set (this machine's CPU torch wheel)
export UV_FIND_LINKS ?= $(PIP_FIND_LINKS)

.PHONY: run demo test check test-latest lock bench gpu-check fuzz base-model serve-model

# $(1): the lock to install. torch first (its wheel depends on the machine), then every other package exactly as
# locked, then the project's own packages, editable, built by the locked setuptools.
define locked_install
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -r requirements/torch.txt
	$(PIP) --require-hashes --no-deps -r $(1)
	$(PIP) --no-deps --no-build-isolation -e . -e ./client
	$(PY) -m pip check --disable-pip-version-check
endef

$(SERVE_STAMP): pyproject.toml client/pyproject.toml requirements/serve.txt requirements/torch.txt
	$(call locked_install,requirements/serve.txt)
	touch $(SERVE_STAMP)

$(STAMP): $(SERVE_STAMP) requirements/dev.txt
	$(call locked_install,requirements/dev.txt)
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
	$(MAKE) --no-print-directory check

# lint, import contracts and the tests, in whichever environment VENV names
check:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest $(PYTEST_ARGS)

$(UV):
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

# The newest versions pyproject.toml's ranges allow, in a fresh .venv-latest, through the same checks as `make test`
# (less tests/test_lock.py, which checks the committed lock against the ranges: `make lock` runs it on the new one).
test-latest: $(UV)
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/torch.txt
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade setuptools
	$(UV) pip install --quiet --python $(LATEST)/bin/python --upgrade --no-build-isolation -e '.[dev]' -e ./client
	$(LATEST)/bin/das fetch-base
	$(MAKE) --no-print-directory check VENV=$(LATEST) PYTEST_ARGS="$(PYTEST_ARGS) --ignore=tests/test_lock.py"

# Refresh requirements/ to exactly what `make test-latest` just installed and tested.
lock: test-latest
	$(LATEST)/bin/python scripts/lock.py --tested $(LATEST) --uv $(UV)
	$(LATEST)/bin/pytest -q tests/test_lock.py

bench: base-model
	$(PY) bench/train_step.py

gpu-check: base-model  # on a GPU machine; DEVICE=cpu runs the same check on the CPU
	$(PY) bench/gpu_check.py --device $(or $(DEVICE),cuda)

fuzz: base-model  # schemathesis over the whole API of a real server, three ways of auth
	bash scripts/fuzz_api.sh
