# Every target bootstraps its own virtual environment: a fresh clone needs only CPython, gcc, make.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
PRESET   ?= default
JOBS     ?= auto

.PHONY: help venv sim test test-slow synth clean
help:
	@echo "make sim      run every hardware unit against the golden model (PRESET=$(PRESET))"
	@echo "make test     the test suite (set-up included)"
	@echo "make test-slow  long simulations and soaks"
	@echo "make clean    remove build products (keeps .venv)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

sim: $(STAMP)
	$(BIN)/bittern sim --unit all --preset $(PRESET)

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -m "not slow and not synth"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) -m slow

clean:
	rm -rf build .pytest_cache
