# GPT Inside and Out. Two commands: `make lab` (set up, then JupyterLab) and `make test` (set up, then the tests).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch for the local setup; requirements.txt keeps a portable range (Colab keeps its own CUDA torch).
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb)) $(sort $(wildcard notebooks/solutions/*.ipynb))
PYTEST_WORKERS ?= 2

.PHONY: setup lab test lint notebooks stamp bench clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml helpers/packages-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r helpers/packages-nodeps.txt
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# Jupyter refuses to run as root unless told to (containers, some cloud machines).
lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

lint: setup
	$(PY) -m ruff check helpers tools tests notebooks $(wildcard benchmarks)
	$(PY) -m ruff format --check helpers tools tests notebooks $(wildcard benchmarks)

# Unit tests and every notebook under nbval, in smoke mode.
test: lint
	COURSE_SMOKE=1 $(PY) -m pytest tests notebooks --nbval-lax --nbval-current-env \
	  --nbval-sanitize-with tests/sanitize.cfg --nbval-cell-timeout=600 -n $(PYTEST_WORKERS) --dist loadfile

# Re-run notebooks in full mode and store their outputs (what is committed): make notebooks [NB=notebooks/04_pretraining.ipynb]
NB ?= $(NOTEBOOKS)
notebooks: setup
	$(PY) -m tools.notebooks stamp $(NB)
	$(PY) -m tools.notebooks run $(NB)

# Speed and memory against the libraries (benchmarks/README.md): make bench [NOTEBOOKS=1] [ARGS="--compile --steps 500"]
bench: setup
	$(PY) -m benchmarks.run $(if $(filter 1,$(NOTEBOOKS)),--notebooks) $(ARGS)

stamp: setup
	$(PY) -m tools.notebooks stamp $(NOTEBOOKS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
