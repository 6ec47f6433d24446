# Quickstart: `make run` (the default scenario on an embedded local Ray) and `make test`.
# Both create .venv and install what they need, system packages included.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system

.PHONY: setup system run test test-all lint bench workloads stub clean

setup: $(STAMP) $(SYSTEM_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# System packages from Debian: musl-gcc rebuilds workloads/, prometheus serves the metrics
# test. Installed only where missing, and only where apt-get can run.
$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	@missing=""; \
	command -v musl-gcc >/dev/null 2>&1 || missing="$$missing musl-tools"; \
	command -v prometheus >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
			echo "installing system packages:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "note: missing system packages:$$missing (install them with your package manager)"; \
		fi; \
	fi
	@touch $(SYSTEM_STAMP)

run: setup
	$(BIN)/tender-ray run configs/laptop.yaml

lint: setup
	$(BIN)/ruff check tender_ray tests
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

test-all: lint
	$(BIN)/python -m pytest -q -m ''

bench: setup
	$(BIN)/tender-ray bench engine

workloads: setup
	$(MAKE) -C workloads

# The native engine's stub (freestanding assembly; the built binary is committed).
stub:
	$(MAKE) -C tender_ray/engines/native/_stub

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
