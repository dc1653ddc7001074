PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo install bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q tests

demo: $(STAMP)
	$(BIN)/hbm demo

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[bench,stan]"
	$(BIN)/python -m benchmarks.ess_per_second --out bench-out

clean:
	rm -rf $(VENV) hbm-demo .pytest_cache
