# plantwatch developer entry points. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the package with its extras, and (for tests) Java and Kafka.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
KAFKA  := $(PYTHON) deploy/local/kafka.py
OBS    := $(PYTHON) deploy/local/observability.py
DEMO   := .demo
# The CPU build of torch; any other version pulls several GB of CUDA packages.
TORCH  ?= torch==2.13.0
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install java kafka-install kafka-start kafka-stop observability-install lint typecheck \
	pytest test demo demo-steps fuzz soak bench-scaleout bench-performance clean

help:
	@echo "make demo   simulate a plant, train a bundle, monitor a live faulty stream with serve"
	@echo "make test   lint, type checks and the whole test suite against a local Kafka"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-installs (and rebuilds the C extension) when these change.
$(VENV)/.installed: pyproject.toml setup.py monitor/_speedups.c | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e '.[cpu,train,dev]'
	touch $@

install: $(VENV)/.installed

java:
	@command -v java >/dev/null 2>&1 || { \
	  echo "installing Java (openjdk-17-jre-headless) for the local Kafka broker"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq openjdk-17-jre-headless; }

kafka-install: java
	$(KAFKA) install

kafka-start: kafka-install
	$(KAFKA) start

kafka-stop:
	$(KAFKA) stop

# Debian's Prometheus and Alertmanager, for the observability tests (their services never start).
observability-install:
	$(OBS) install

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest

# Starts Kafka only if it was not already running, and then stops it again whatever happened.
test: install kafka-install observability-install
	@was_running=0; $(KAFKA) status >/dev/null 2>&1 && was_running=1; \
	$(KAFKA) start || exit 1; \
	status=0; $(MAKE) --no-print-directory lint typecheck pytest || status=$$?; \
	[ $$was_running = 1 ] || $(KAFKA) stop; \
	exit $$status

# The whole path on a simulated plant: normal history -> bundle -> live stream with faults ->
# serve -> alerts on Kafka and a webhook. Stops everything it started.
demo: install kafka-install
	@was_running=0; $(KAFKA) status >/dev/null 2>&1 && was_running=1; \
	$(KAFKA) start || exit 1; \
	status=0; $(MAKE) --no-print-directory demo-steps || status=$$?; \
	[ $$was_running = 1 ] || $(KAFKA) stop; \
	exit $$status

demo-steps:
	@mkdir -p $(DEMO)
	$(BIN)/plantwatch simulate --out $(DEMO)/normal.parquet --pumps 4 --compressors 2 \
	  --duration 12h --faults 0 --seed 1 --plant-seed 1
	@# A bundle per kind of machine, served by one serve with a route each (README, "Routes").
	$(BIN)/plantwatch train --data $(DEMO)/normal.parquet --out $(DEMO)/bundle-pumps \
	  --assets 'pump-*' --model dense --window 32 --epochs 40 --no-progress --name demo-pumps
	$(BIN)/plantwatch train --data $(DEMO)/normal.parquet --out $(DEMO)/bundle-compressors \
	  --assets 'compressor-*' --model dense --window 32 --epochs 40 --no-progress \
	  --name demo-compressors
	$(BIN)/plantwatch inspect $(DEMO)/bundle-pumps
	@echo
	@echo "bundles: $(DEMO)/bundle-pumps, $(DEMO)/bundle-compressors   reports: <bundle>/report/summary.md"
	@echo
	$(BIN)/python deploy/local/demo.py --bundle 'pump-*=$(DEMO)/bundle-pumps' \
	  --bundle 'compressor-*=$(DEMO)/bundle-compressors' --workdir $(DEMO) \
	  --pumps 4 --compressors 2 --plant-seed 1 --hours 3

# Longer runs, not part of make test (results in bench/results/).
fuzz: install
	$(BIN)/pip install -q -e '.[fuzz]'
	$(BIN)/python bench/fuzz_decoders.py --seconds 60
	$(BIN)/python bench/fuzz_decoders.py --engine atheris --seconds 600

soak: install kafka-install
	$(BIN)/python bench/soak.py --minutes 60 --fault-every 300 --rate auto

bench-scaleout: install kafka-start
	$(BIN)/python bench/scaleout.py

bench-performance: install kafka-start
	$(BIN)/python bench/performance.py

clean:
	rm -rf $(DEMO) .mypy_cache .ruff_cache .pytest_cache
