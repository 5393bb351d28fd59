# Set-up is part of every target: a fresh machine needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv tools load-tools demo test test-under-load check lint constraints clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

# System tools that tests drive: libfaketime (a driver under a skewed clock), and pdflatex (the
# report's LaTeX tables compiled: texlive-latex-recommended, 151 MB, about 70 s), Debian's.
tools:
	@command -v faketime >/dev/null || (apt-get update -qq && apt-get install -y -qq faketime)
	@command -v pdflatex >/dev/null || (apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends texlive-latex-recommended)

# ... and the CPU load that test-under-load runs the suite beside: stress-ng, Debian's package.
load-tools:
	@command -v stress-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq stress-ng)

# The main job on the embedded default: a local Ray, a local SQLite MLflow store (mlflow.db),
# results under kdsweep-results/, plots under kdsweep-report/. Rerunning continues, never redoes.
demo: venv
	$(BIN)/kdsweep run sweeps/configs/digits.yaml
	$(BIN)/kdsweep report sweeps/configs/digits.yaml --out kdsweep-report

lint: venv
	$(BIN)/ruff check .

# Both tiers run on two workers (the CI machine's cores; a third starved Ray's job agent), a
# test at a time wherever a worker is free (--maxschedchunk 1: the slow tests, ordered first by
# tests/conftest.py, are spread over both workers as they free up, not sent in one batch), in a
# new random order each time: SEED=N repeats an order (pytest-randomly). Not loadgroup: with
# pytest 9 xdist 3.8 no longer groups by it.
XDIST ?= -n 2 --dist load --maxschedchunk 1
# drawn once (:=), so the seed echoed is the seed used
ifndef SEED
SEED := $(shell od -An -N3 -tu4 /dev/urandom | tr -d ' ')
endif

SUITE = $(BIN)/python -m pytest -q $(XDIST) --randomly-seed=$(SEED) --durations=15 $(PYTEST_ARGS)

test: venv lint tools
	@echo "test order: SEED=$(SEED)"
	$(SUITE)

# `make test` beside a CPU load, as on a shared CI machine or a busy laptop (issue 46): stress-ng's
# CPU workers (LOAD, default 4: a load average around 6 on 2 cores) run for as long as the suite
# does, then are stopped; a red run here is a bug, not a slow machine. Prints its wall time.
# SEED=N repeats an order, as for `make test`.
LOAD ?= 4
test-under-load: venv lint tools load-tools
	@echo "test order: SEED=$(SEED), beside stress-ng --cpu $(LOAD)"
	stress-ng --cpu $(LOAD) --timeout 3h --quiet & load=$$!; \
	trap 'kill $$load 2>/dev/null; wait $$load 2>/dev/null' EXIT INT TERM; \
	start=$$(date +%s); \
	$(SUITE); rc=$$?; \
	echo "test-under-load: the suite exited $$rc after $$(( $$(date +%s) - start )) s beside" \
	     "stress-ng --cpu $(LOAD) (load average $$(cut -d' ' -f1-3 /proc/loadavg))"; \
	exit $$rc

# The per-change tier (~1.5 minutes): every test not marked slow, plus one end-to-end sweep.
check: venv lint tools
	@echo "test order: SEED=$(SEED)"
	$(BIN)/python -m pytest -q $(XDIST) --randomly-seed=$(SEED) -m "not slow or check" $(PYTEST_ARGS)

# Re-pin the tested set after changing pyproject's dependencies.
constraints: venv
	(echo "# Tested versions; the Makefile installs with '-c constraints.txt'. Regenerate: make constraints"; \
	 $(BIN)/pip freeze --exclude-editable | grep -vi '^kdsweep') > constraints.txt

clean:
	rm -rf kdsweep-results kdsweep-report mlflow.db mlruns .pytest_cache .ruff_cache
