# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: run test soak install install-dev protos check-protos lint lint-protos format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

## Both services on the embedded SQLite default (state under ./.stepstream/); the engine's
## outbox relay ships events to the analytics service. Ctrl-C stops both.
run: install
	@trap 'kill 0' INT TERM EXIT; \
	$(BIN)/python -m analytics_service & \
	STEPSTREAM_ANALYTICS_TARGET=$${STEPSTREAM_ANALYTICS_TARGET:-127.0.0.1:50052} \
	  $(BIN)/python -m engine_service & \
	wait

## The whole suite with coverage (needs Postgres: see README).
test: install-dev
	$(BIN)/pytest --cov --cov-report=term --cov-report=xml:coverage.xml
	$(BIN)/coverage report --include='engine_service/core/*' --fail-under=95 > /dev/null \
		|| { echo "engine_service/core branch coverage is under 95%"; \
		     $(BIN)/coverage report --include='engine_service/core/*'; exit 1; }

## The fuzz tier at soak size: 100,000 generated requests against both services on SQLite
## and Postgres (set STEPSTREAM_FUZZ_REQUESTS for another count, STEPSTREAM_FUZZ_SEED to
## replay a run). CI runs the same tier at 5,600.
## Then the process faults at full size: 100 executions, five kill -9 of the engine,
## Postgres stopped 10 s, analytics down for the middle third; prints the figures
## (CI runs 30 executions, two kills, 3 s).
## Then the engine's fault simulator: 100,000 schedules on the in-memory store and 200 on
## SQLite and on Postgres (STEPSTREAM_SIM_SCHEDULES, STEPSTREAM_SIM_SQL_SCHEDULES; a failure
## prints the seed that replays it, STEPSTREAM_SIM_SEED). CI replays the pinned schedules
## only, until the random budget passes on fresh seeds every time.
soak: install-dev
	STEPSTREAM_FUZZ_REQUESTS=$${STEPSTREAM_FUZZ_REQUESTS:-100000} \
	  $(BIN)/pytest tests/fuzz -q -p no:cacheprovider
	STEPSTREAM_SOAK=1 $(BIN)/pytest tests/e2e/pipeline/test_process_faults.py -q -s -p no:cacheprovider
	STEPSTREAM_SIM=1 STEPSTREAM_SIM_SCHEDULES=$${STEPSTREAM_SIM_SCHEDULES:-100000} \
	  STEPSTREAM_SIM_SQL_SCHEDULES=$${STEPSTREAM_SIM_SQL_SCHEDULES:-200} \
	  $(BIN)/pytest tests/sim -q -p no:cacheprovider

## Regenerate the committed stubs from protos/ with the pinned generators.
protos: install-dev
	$(BIN)/python protos/generate.py

## Fail when the committed stubs differ from what the .proto files generate.
check-protos: protos
	@git diff --exit-code --stat -- protos/ \
		&& test -z "$$(git status --porcelain --untracked-files=all -- protos/)" \
		|| { echo "generated stubs are stale: run 'make protos' and commit"; exit 1; }

$(BUF):
	npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION)

lint-protos: $(BUF)
	cd protos && ../$(BUF) lint

lint: install-dev lint-protos
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: install-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install-dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tools .stepstream .coverage coverage.xml .pytest_cache .mypy_cache
