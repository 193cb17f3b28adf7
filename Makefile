# The README's commands. Each creates or refreshes .venv first (stdlib venv + pip): the exact
# versions of requirements.lock, then normzoo itself (editable, no dependency resolution).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# The extras the lock covers and `make` installs: dev (pytest, ruff) and cluster (submitit).
EXTRAS := dev,cluster

.PHONY: venv test compare lint lock check-lowest clean clean-results

venv: $(STAMP)

# The last step builds normzoo's C++ kernels (batch renorm's training step; ~30 s, once per
# source and torch version) so that no run waits for the compiler; without a compiler it warns
# and the pure-PyTorch path is used.
$(STAMP): $(LOCK) pyproject.toml Makefile normzoo/functional/csrc/batch_renorm.cpp
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -c "from normzoo.functional import _cpp; _cpp.main()"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

compare: $(STAMP)
	$(PY) benchmarks/compare.py $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check normzoo benchmarks tests .ci/lock.py

# Re-resolve pyproject.toml (+ EXTRAS) from the package index into the lock file.
lock: $(STAMP)
	$(PY) .ci/lock.py lock $(EXTRAS) > $(LOCK).new
	mv $(LOCK).new $(LOCK)

# Install the lowest versions pyproject.toml allows for the light dependencies (numpy, scipy,
# pandas, matplotlib, pyyaml, rich, wandb, submitit) into .lowest/ and run the tests that use them.
check-lowest: $(STAMP)
	rm -rf .lowest
	$(PY) .ci/lock.py lowest > $(VENV)/lowest.txt
	$(PY) -m pip install --quiet --target .lowest -r $(VENV)/lowest.txt
	PYTHONPATH=.lowest $(PY) -m pytest -q -p no:cacheprovider tests/stats tests/report \
		tests/bench/test_config.py tests/bench/test_store.py tests/bench/test_track.py \
		tests/bench/test_cluster.py -k "not crash and not parent and not racing" $(PYTEST_ARGS)

# Build outputs and caches; results (runs/) are kept: `make clean-results` deletes those.
clean:
	rm -rf $(VENV) build dist .lowest .pytest_cache .hypothesis .ruff_cache *.egg-info

# Deletes every stored result: runs/ (the default output dirs of `make compare`) and wandb/.
clean-results:
	rm -rf runs wandb
