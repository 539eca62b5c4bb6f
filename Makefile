# Every target bootstraps its own virtual environment: a fresh clone needs only CPython, gcc, make.
PYTHON   ?= python3
VENV     := .venv
BIN      := $(VENV)/bin
STAMP    := $(VENV)/.installed
PRESET   ?= default
JOBS     ?= auto

.PHONY: help venv sim demo test test-slow synth test-synth formal clean
help:
	@echo "make sim        simulate every hardware unit against golden/ (PRESET=$(PRESET))"
	@echo "make test       the test suite (set-up included)"
	@echo "make demo       the shipped tiny model generating text on the RTL, checked"
	@echo "make test-slow  long simulations and soaks"
	@echo "make synth      bitstreams, Fmax and utilisation for both boards (installs YoWASP)"
	@echo "make test-synth the tests that run Yosys and nextpnr (minutes)"
	@echo "make formal     every formal proof and its mutants, with a report (installs SymbiYosys)"
	@echo "make clean      remove build products (keeps .venv)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

sim: $(STAMP)
	$(BIN)/bittern sim --unit all --preset $(PRESET)

demo: $(STAMP)
	$(BIN)/bittern run --model tiny --backend rtl --tokens 16 --check

# The suite's quick synthesis tests (PLL dividers, PE and array area) need the YoWASP tools, its
# quick formal proofs SymbiYosys and a solver; the training graph needs torch, golden against
# Hugging Face torch and transformers, the sweep Dask and matplotlib. A test that needs an extra
# listed in BITTERN_EXTRAS fails, rather than skips, when it does not import.
# One BLAS thread per worker: the workers fill the cores, and OpenBLAS threads competing for
# them made the golden model's small matrix products ten times slower.
test: $(VENV)/.synth-installed $(VENV)/.formal-installed $(VENV)/.test-extras-installed
	BITTERN_EXTRAS="train hf sweep" OPENBLAS_NUM_THREADS=1 \
	$(BIN)/python -m pytest -n $(JOBS) --durations=15 -m "not slow and not synth and not formal"

# The soaks: among them the device regression, 20 seeds a preset on X builds (tests/test_regression.py).
test-slow: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -n $(JOBS) -m slow

$(VENV)/.synth-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[synth]'
	touch $@

$(VENV)/.test-extras-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[train,hf,sweep]'
	touch $@

# Both boards are built even if the first misses its clock; the target fails if either does.
synth: $(VENV)/.synth-installed
	status=0; \
	$(BIN)/bittern synth --board ulx3s-85f || status=1; \
	$(BIN)/bittern synth --board icebreaker || status=1; \
	exit $$status

test-synth: $(VENV)/.synth-installed
	$(BIN)/python -m pytest -n $(JOBS) -m synth

$(VENV)/.formal-installed: $(STAMP)
	$(BIN)/pip install --quiet -e '.[formal]'
	touch $@

# Every proof, then every mutant (each must fail its proof); results of unchanged jobs are reused.
formal: $(VENV)/.formal-installed
	$(BIN)/bittern formal --mutants

clean:
	rm -rf build .pytest_cache
