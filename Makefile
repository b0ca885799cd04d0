# flhelpers: `make reproduce` runs the main job, `make test` runs the tests.
# Both create .venv and install the package when needed (only Python >= 3.10 and pip required).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
RESULTS ?=
export FLHELPERS_DATA ?= $(CURDIR)/data

.PHONY: install test test-fast reproduce benchmarks clean-results

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,ray,flower]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

reproduce: $(VENV)/.installed
	$(PY) -m flhelpers reproduce --profile $(PROFILE) $(if $(RESULTS),--results-dir $(RESULTS),)

benchmarks: $(VENV)/.installed
	$(PY) benchmarks/aggregation.py
	$(PY) benchmarks/round_speed.py

clean-results:
	rm -rf $(or $(RESULTS),results)/runs $(or $(RESULTS),results)/notebooks
