PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Second leg: Python 3.12+ (pip brings ArviZ 1.x there) with the lowest supported JAX.
PYTHON312 ?= $(shell sh scripts/find-python312.sh)
VENV312 := .venv312
BIN312 := $(VENV312)/bin
STAMP312 := $(VENV312)/.installed
FLOOR := scripts/lowest-supported.txt
# the tests that touch ArviZ: results, diagnostics, ADVI, predictions, drivers, CLI and demo
ARVIZ_TESTS := tests/test_results.py tests/test_diagnostics.py tests/samplers/test_advi.py \
	tests/test_predict.py tests/test_predict_arviz.py tests/test_drivers.py tests/test_cli.py \
	tests/test_compare.py tests/test_checkpoint.py
# the tests that pin hbm's random numbers to jax.random's, which JAX versions may derive
# differently (hbm/samplers/threefry.py): run on the lowest supported JAX too
RANDOM_TESTS := tests/samplers/test_threefry.py tests/samplers/test_trajectory.py

.PHONY: test test311 test312 demo install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: test311 test312

test311: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

$(STAMP312): pyproject.toml $(FLOOR)
	$(PYTHON312) -m venv $(VENV312)
	$(BIN312)/python -m pip install --quiet --upgrade pip
	$(BIN312)/python -m pip install --quiet -e ".[test]" -c $(FLOOR)
	touch $(STAMP312)

test312:
ifeq ($(strip $(PYTHON312)),)
	@echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
	@echo "!! SKIPPED the Python 3.12 / ArviZ 1.x leg: no Python >= 3.12 interpreter found  !!"
	@echo "!! (looked on PATH and in pyenv's versions; set PYTHON312=/path/to/python3.12)   !!"
	@echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
else
	@$(MAKE) --no-print-directory $(STAMP312)
	@$(BIN312)/python -c "import sys, jax, arviz; print(f'Python {sys.version.split()[0]}, jax {jax.__version__}, arviz {arviz.__version__}')"
	$(BIN312)/python -m pytest -n 2 --dist loadfile -q $(ARVIZ_TESTS) $(RANDOM_TESTS)
endif

demo: $(STAMP)
	$(BIN)/hbm demo

# Benchmarks run in their own venv: the peers (BlackJAX, NumPyro, nutpie + PyMC, pystan)
# are optional extras, never dependencies of the package or its tests.
VENV_BENCH := .venv-bench
PYTHON_BENCH ?= $(PYTHON)

$(VENV_BENCH)/.installed: pyproject.toml
	$(PYTHON_BENCH) -m venv $(VENV_BENCH)
	$(VENV_BENCH)/bin/python -m pip install --quiet --upgrade pip
	$(VENV_BENCH)/bin/python -m pip install --quiet -e ".[bench,stan]"
	touch $@

bench: $(VENV_BENCH)/.installed
	$(VENV_BENCH)/bin/python -m benchmarks.ess_per_second --repeats 3 --out bench-out
	$(VENV_BENCH)/bin/python -m benchmarks.cold_start --repeats 3 --out bench-out

clean:
	rm -rf $(VENV) $(VENV312) $(VENV_BENCH) hbm-demo .pytest_cache
