# notifier-harness: `make test-guest` (the main job) and `make test` (all tests)
# set everything up themselves on a fresh Debian machine.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= configs/default.yaml

.PHONY: setup host-packages test-guest test test-unit typecheck bench clean

setup: host-packages $(STAMP)

host-packages:
	@$(PYTHON) -m harness.host_setup

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { \
	  echo "setup: cannot create a virtualenv with $(PYTHON); install python3-venv" >&2; exit 2; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# The main job: the embedded default config (Debian 6.1, the scenarios that exist).
test-guest: setup
	$(BIN)/notifier-harness run -c $(CONFIG)

# Every test: the type check of harness/ (strict mypy), unit tests (no VM) and guest tests (real
# boots under QEMU).
test: setup typecheck
	$(BIN)/python -m pytest -q

test-unit: setup typecheck
	$(BIN)/python -m pytest -q -m 'not guest'

typecheck: setup
	$(BIN)/python -m mypy

bench: setup
	$(BIN)/notifier-harness bench -c configs/matrix.yaml

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
