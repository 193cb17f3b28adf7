# The README's two commands. Each creates or refreshes .venv first (stdlib venv + pip).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test compare lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

compare: $(STAMP)
	$(PY) benchmarks/compare.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check normzoo benchmarks tests

clean:
	rm -rf $(VENV) runs wandb .pytest_cache .hypothesis
