# flhelpers: `make reproduce` runs the main job, `make test` runs the tests.
# Both create .venv and install the package when needed (only Python >= 3.10 and pip required).
# `make lab` opens JupyterLab on notebooks/ with this environment as its kernel.
# `make docs` builds the documentation site into site/ (strict); `make docs-serve` serves it.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
RESULTS ?=
# REFRESH=1 (medium only): redraw into the committed results/reference/medium/ itself
REFRESH ?=
# COMPUTE_MISSING=1 (medium only): compute the runs the committed store lacks (hours each)
COMPUTE_MISSING ?=
# extra JupyterLab options, e.g. LAB_ARGS="--allow-root --no-browser --ip 0.0.0.0"
LAB_ARGS ?=
export FLHELPERS_DATA ?= $(CURDIR)/data

.PHONY: install test test-fast reproduce lab speed benchmarks clean-results docs docs-serve

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test,ray,flower,lab]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

reproduce: $(VENV)/.installed
	$(PY) -m flhelpers_lab reproduce --profile $(PROFILE) $(if $(RESULTS),--results-dir $(RESULTS),) $(if $(REFRESH),--refresh-reference,) $(if $(COMPUTE_MISSING),--compute-missing,)

# The notebooks declare the kernel "python3", which every environment with ipykernel has, so
# papermill and JupyterLab run them on a fresh install (JupyterLab started here: this environment).
# The kernel "Python (flhelpers)" installed below runs this environment from any other Jupyter
# too (pick it there); the paired scripts notebooks/*.py open as notebooks with one click
# (jupytext's viewer is the default).
LAB_SETTINGS := $(VENV)/share/jupyter/lab/settings
lab: $(VENV)/.installed
	$(PY) -m ipykernel install --user --name flhelpers --display-name "Python (flhelpers)"
	mkdir -p $(LAB_SETTINGS)
	test -f $(LAB_SETTINGS)/overrides.json || echo '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' > $(LAB_SETTINGS)/overrides.json
	$(VENV)/bin/jupyter lab notebooks/ $(LAB_ARGS)

# the speed measurements (speed/: scripts that print figures, not tests); `benchmarks` is its old name
benchmarks: speed
speed: $(VENV)/.installed
	$(PY) speed/aggregation.py
	$(PY) speed/round_speed.py
	$(PY) speed/round_shares.py
	$(PY) speed/precision.py

# The site: the generated pages (API from the docstrings, results from the committed store, the executed
# medium notebooks; python -m flhelpers_lab.docsite), then mkdocs --strict: a broken link, a missing page
# or an unresolved API reference fails the build.
DOCS_ADDR ?= 127.0.0.1:8000
$(VENV)/.docs-installed: pyproject.toml $(VENV)/.installed
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	MPLBACKEND=Agg $(PY) -m flhelpers_lab.docsite
	MPLBACKEND=Agg $(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.docs-installed
	MPLBACKEND=Agg $(PY) -m flhelpers_lab.docsite
	MPLBACKEND=Agg $(VENV)/bin/mkdocs serve --dev-addr $(DOCS_ADDR)

clean-results:
	rm -rf $(or $(RESULTS),results)/runs $(or $(RESULTS),results)/notebooks
