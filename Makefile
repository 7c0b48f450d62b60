# The README's two commands: `make serve` and `make test`. Both make .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: bench serve test lint typecheck pytest install-runtime install-dev models services clean docs docs-build

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# constraints.txt: the versions tested; every install goes through it.
$(VENV)/.runtime: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.dev: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt -e '.[train,dev]'
	touch $@ $(VENV)/.runtime

install-runtime: $(VENV)/.runtime
install-dev: $(VENV)/.dev

serve: $(VENV)/.runtime
	$(BIN)/lstm-serve serve --host $(HOST) --port $(PORT)

# The benchmark harness (needs wrk and the dev extra); see docs/performance.md.
bench: $(VENV)/.dev
	$(BIN)/python -m benchmarks.bench $(BENCH_ARGS)

models: $(VENV)/.runtime
	$(BIN)/lstm-serve models

lint: $(VENV)/.dev
	$(BIN)/ruff check service tests benchmarks
	$(BIN)/ruff format --check service tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy service tests benchmarks

# What the tests talk to: a Redis at 127.0.0.1:6379 (started if not answering) and nginx
# (Debian's package, installed if missing) in front of the replicas in the e2e tests; Debian's
# chromium for the console's browser tests (Playwright drives it) and promtool (package
# prometheus) for the monitoring config check.
services:
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || \
		redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no
	@command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		 apt-get install -y -qq --no-install-recommends nginx >/dev/null)
	@command -v chromium >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		 apt-get install -y -qq --no-install-recommends chromium >/dev/null)
	@command -v promtool >/dev/null 2>&1 || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		 apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

pytest: $(VENV)/.dev services
	$(BIN)/pytest -q $(PYTEST_ARGS)

# The documentation site (mkdocs-material); --strict turns a broken link into a failure.
docs: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: $(VENV)/.dev
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

test: lint typecheck docs-build pytest

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
