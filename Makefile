# One-command entry points. Everything installs into ./.venv; nothing global but the optional
# Debian packages the browser tests need (make test installs them when missing, as root).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= config.example.yaml
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck install clean sample-feed bench bench-1m services golden

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[web,test]'
	touch $(STAMP)

install: $(STAMP)

## demo: the sample feed dated to today (var/demo-feed), fully synced into SQLite
## (./var/registry.db) with reminders planned, then a summary
demo: export REGISTRY_SAMPLE_FEED = var/demo-feed
demo: $(STAMP)
	$(BIN)/python examples/generate_sample_feed.py --out var/demo-feed --outcomes-out var/demo-outcomes --as-of today
	$(BIN)/registry-adapter --config $(CONFIG) db upgrade
	$(BIN)/registry-adapter --config $(CONFIG) sync --full

## test: install what the tests need and run the whole suite (lint and types included)
test: $(STAMP) services
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

services:
	@bash scripts/ensure-services.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

sample-feed: $(STAMP)
	$(BIN)/python examples/generate_sample_feed.py

## golden: rewrite tests/golden/**/*.expected.json after a reviewed mapping change; review the diff
golden: $(STAMP)
	$(BIN)/python scripts/golden.py

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

## bench-1m: peak RSS and throughput of an import of ~1,000,000 resources vs ~10,000, and the
## remap (reprocess --all) of each store (long: ~30+ min on a shared 2-core machine)
bench-1m: $(STAMP)
	$(BIN)/python benchmarks/bench_import.py --skip-fhir --rss 1600,160000 --remap

clean:
	rm -rf $(VENV) var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
