# The two things a newcomer runs: `make demo` (a bad deploy rolled back on this
# machine) and `make test` (the whole suite, servers included).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo check test testbed lint unit integration clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP) testbed
	$(BIN)/watchdogd demo

check: $(STAMP)
	$(BIN)/watchdogd check $(addprefix --config ,$(wildcard config/examples/*.yaml))

testbed:
	bash scripts/testbed.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict watchdogd

unit: $(STAMP)
	$(BIN)/pytest tests/unit -q

integration: $(STAMP) testbed
	$(BIN)/pytest tests/integration -q

# Everything CI runs: servers up, lint, types, every test.
test: $(STAMP) testbed lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
