# The two commands the README opens with: `make demo` and `make test`.
# Each sets up .venv on first use (and again when pyproject.toml changes).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	@# The caption metrics (pycocoevalcap) run java; install a JRE where we can (root with apt).
	@command -v java >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && apt-get update -qq && apt-get install -y -qq --no-install-recommends default-jre-headless; } \
	  || echo "warning: no java on PATH: newsdl's caption metrics need a Java runtime" >&2
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/newsdl ops build
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/newsdl demo

test: setup
	$(BIN)/python -m pytest -ra

bench: setup
	$(BIN)/python benchmarks/bench_ingest.py
	$(BIN)/python benchmarks/bench_gcd.py

clean:
	rm -rf $(VENV) newsdl-work .pytest_cache
