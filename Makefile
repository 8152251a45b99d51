# The README's two commands live here: `make serve` and `make test`. Both work on a fresh machine with python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
REDIS_PORT := 6379

.PHONY: serve test lint services docs migration clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The local extra compiles llama.cpp from source (~5 minutes on 2 cores, once): it gives serve a model
# that works offline with no API key. On x86-64 it is built for any CPU with AVX2, not for the building one
# (llama.cpp's default, -march=native): a native build on a Xeon with AMX crashed on its first batch of prompt
# tokens (a segfault in decode), and pip's cached wheel would carry one machine's build to the next. CMAKE_ARGS
# set in the environment wins.
ifeq ($(shell uname -m),x86_64)
CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
export CMAKE_ARGS
endif
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[local]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[dev,local,loadtest,tracing]'
	touch $(VENV)/.installed $@

## Set up and serve the API on the embedded database (http://127.0.0.1:8000, docs at /schema).
serve: $(VENV)/.installed
	$(BIN)/agentctl serve

## Set up and run the whole test suite (starts Redis on 127.0.0.1 if none answers).
test: $(VENV)/.installed-dev services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## Local services the tests use: Redis (PostgreSQL is embedded), promtool for compose/'s alert rules, and tmux,
## the terminal the interactive `agentctl chat` tests type into.
services: | $(BIN)/python
	@$(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', $(REDIS_PORT)), 1)" 2>/dev/null \
	|| { command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	     redis-server --daemonize yes --bind 127.0.0.1 --port $(REDIS_PORT) --save '' --appendonly no; \
	     sleep 0.5; }
	@command -v promtool >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
	@command -v tmux >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends tmux; }

## Regenerate the README's configuration table from the settings.
docs: $(VENV)/.installed
	$(BIN)/python -c "import re, pathlib; from agentctl.cli.config import configuration_reference as ref; \
	p = pathlib.Path('README.md'); s = p.read_text(); \
	p.write_text(re.sub(r'(<!-- config:start -->\n).*?(<!-- config:end -->)', lambda m: m[1] + ref() + '\n' + m[2], s, flags=re.S))"

## New Piccolo migration from the table definitions: make migration DESC="what changes"
migration: $(VENV)/.installed
	PICCOLO_CONF=server.database.piccolo_conf $(BIN)/piccolo migrations new agentctl --auto --desc="$(DESC)"

clean:
	rm -rf $(VENV) .agentctl .pytest_cache .ruff_cache dist build
