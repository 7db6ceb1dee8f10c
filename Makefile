# streamrnn developer targets. `make help` lists them.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A GPU user points this at the CUDA build of the same torch version, e.g.
#   make install TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_INDEX ?=
PIP_INDEX := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
PYTEST_ARGS ?=
QUALITY_ARGS ?=

.PHONY: help install test test-fast demo lint format nab quality bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt $(PIP_INDEX) -e '.[dev]'
	touch $@

install: $(BIN)/.installed ## create .venv and install streamrnn with torch pinned (constraints.txt)

test: install ## run the whole test suite (embedded Kafka broker and Prometheus included)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install ## unit tests only: no broker, no Prometheus, no Alertmanager
	$(BIN)/python -m pytest -m "not kafka and not prometheus and not alertmanager and not slow" $(PYTEST_ARGS)

demo: install ## the one-command tour: embedded broker, generator, model, detector, live alerts, metrics
	$(BIN)/streamrnn demo

lint: install ## ruff and mypy
	$(BIN)/ruff check streamrnn tests bench
	$(BIN)/ruff format --check streamrnn tests bench
	$(BIN)/mypy streamrnn

format: install ## apply ruff's formatting and fixes
	$(BIN)/ruff format streamrnn tests bench
	$(BIN)/ruff check --fix streamrnn tests bench

nab: install ## detection quality on ../shared/data/nab-dev (see docs/quality.md)
	$(BIN)/python -m bench.nab

quality: install ## detection quality in one run: NAB, generated suite, clean streams (QUALITY_ARGS=--quick)
	$(BIN)/python -m bench.quality $(QUALITY_ARGS)

bench: install ## throughput, latency and memory on the embedded broker (see docs/benchmarks.md)
	$(BIN)/python -m bench.throughput

clean: ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
