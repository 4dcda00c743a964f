# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf

.PHONY: run test install install-dev protos check-protos lint lint-protos format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

## Start both services on the embedded SQLite default (state under ./.stepstream/).
## Each service runs in the foreground of this command; Ctrl-C stops both.
run: install
	@started=0; trap 'kill 0' INT TERM EXIT; \
	for svc in engine_service analytics_service; do \
	  if [ -f $$svc/__main__.py ]; then \
	    echo "starting $$svc"; $(BIN)/python -m $$svc & started=1; \
	  else echo "$$svc: not built yet, not started"; fi; \
	done; \
	if [ $$started = 0 ]; then echo "no service to run yet"; exit 1; fi; wait

## The whole suite with coverage (needs Postgres: see README).
test: install-dev
	$(BIN)/pytest --cov --cov-report=term --cov-report=xml:coverage.xml
	$(BIN)/coverage report --include='engine_service/core/*' --fail-under=95 > /dev/null \
		|| { echo "engine_service/core branch coverage is under 95%"; \
		     $(BIN)/coverage report --include='engine_service/core/*'; exit 1; }

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
