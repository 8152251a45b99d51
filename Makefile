# The README's two commands live here: `make serve` and `make test`. Both work on a fresh machine with python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
REDIS_PORT := 6379

.PHONY: serve test lint services docs migration vendor clean

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

## Local services the tests use: Redis (PostgreSQL is embedded), promtool for compose/'s alert rules, tmux,
## the terminal the interactive `agentctl chat` tests type into, Debian's Chromium, the browser the web page's
## tests drive through Playwright (whose own browser download needs a network the tests do not assume), Node.js
## with npm, which run the official `openai` npm package against /v1, and Debian's nginx, the proxy in front of
## `agentctl loadtest --simulate --replicas N` (started by it, unprivileged, never as a system service), and
## PgBouncer, which the tests put in front of PostgreSQL to show that a transaction pooler is refused.
services: | $(BIN)/python
	@$(BIN)/python -c "import socket; socket.create_connection(('127.0.0.1', $(REDIS_PORT)), 1)" 2>/dev/null \
	|| { command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }; \
	     redis-server --daemonize yes --bind 127.0.0.1 --port $(REDIS_PORT) --save '' --appendonly no; \
	     sleep 0.5; }
	@command -v promtool >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; }
	@command -v tmux >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends tmux; }
	@command -v chromium >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }
	@{ command -v node && command -v npm; } >/dev/null \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm; }
	@test -x /usr/sbin/nginx \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx; }
	@test -x /usr/sbin/pgbouncer \
	|| { apt-get update -qq && apt-get install -y -qq --no-install-recommends pgbouncer; }

## Regenerate the README's configuration table from the settings.
docs: $(VENV)/.installed
	$(BIN)/python -c "import re, pathlib; from agentctl.cli.config import configuration_reference as ref; \
	p = pathlib.Path('README.md'); s = p.read_text(); \
	p.write_text(re.sub(r'(<!-- config:start -->\n).*?(<!-- config:end -->)', lambda m: m[1] + ref() + '\n' + m[2], s, flags=re.S))"

## New Piccolo migration from the table definitions: make migration DESC="what changes"
migration: $(VENV)/.installed
	PICCOLO_CONF=server.database.piccolo_conf $(BIN)/piccolo migrations new agentctl --auto --desc="$(DESC)"

# The web page's browser libraries (server/web/static/vendor) and axe-core for its tests (tests/web/vendor), pinned.
MARKED_VERSION := 18.2.1
DOMPURIFY_VERSION := 3.5.0
EVENTSOURCE_PARSER_VERSION := 4.1.3
AXE_CORE_VERSION := 4.14.1
WEB_VENDOR := server/web/static/vendor
TEST_VENDOR := tests/web/vendor

## Refresh the vendored browser libraries from npm at the versions above (needs npm; nothing is built).
vendor:
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	for pkg in marked@$(MARKED_VERSION) dompurify@$(DOMPURIFY_VERSION) eventsource-parser@$(EVENTSOURCE_PARSER_VERSION) \
	           axe-core@$(AXE_CORE_VERSION); do \
	  name=$${pkg%@*}; mkdir -p $$tmp/$$name; (cd $$tmp && npm pack -q --silent $$pkg >/dev/null); \
	  tar xzf $$tmp/$$name-*.tgz -C $$tmp/$$name; \
	done; \
	rm -rf $(WEB_VENDOR) $(TEST_VENDOR); mkdir -p $(WEB_VENDOR)/eventsource-parser $(TEST_VENDOR); \
	strip() { sed '/^\/\/# sourceMappingURL=/d' "$$1" > "$$2"; }; \
	strip $$tmp/marked/package/lib/marked.esm.js $(WEB_VENDOR)/marked.esm.js; \
	cp $$tmp/marked/package/LICENSE $(WEB_VENDOR)/marked.LICENSE; \
	strip $$tmp/dompurify/package/dist/purify.es.mjs $(WEB_VENDOR)/purify.es.mjs; \
	cp $$tmp/dompurify/package/LICENSE $(WEB_VENDOR)/dompurify.LICENSE; \
	for f in index parse errors; do \
	  strip $$tmp/eventsource-parser/package/dist/$$f.js $(WEB_VENDOR)/eventsource-parser/$$f.js; done; \
	cp $$tmp/eventsource-parser/package/LICENSE $(WEB_VENDOR)/eventsource-parser/LICENSE; \
	cp $$tmp/axe-core/package/axe.min.js $$tmp/axe-core/package/LICENSE $(TEST_VENDOR)/; \
	printf '%s\n' "Vendored by \`make vendor\` (versions pinned in the Makefile); do not edit." "" \
	  "| library | version | licence | file |" "|---|---|---|---|" \
	  "| marked | $(MARKED_VERSION) | MIT | marked.esm.js |" \
	  "| DOMPurify | $(DOMPURIFY_VERSION) | MPL-2.0 or Apache-2.0 | purify.es.mjs |" \
	  "| eventsource-parser | $(EVENTSOURCE_PARSER_VERSION) | MIT | eventsource-parser/ |" > $(WEB_VENDOR)/VERSIONS.md; \
	printf '%s\n' "axe-core $(AXE_CORE_VERSION), MPL-2.0, vendored by \`make vendor\` for the web page's tests." \
	  > $(TEST_VENDOR)/VERSION.md; \
	echo "vendored: marked $(MARKED_VERSION), DOMPurify $(DOMPURIFY_VERSION), eventsource-parser $(EVENTSOURCE_PARSER_VERSION), axe-core $(AXE_CORE_VERSION)"

clean:
	rm -rf $(VENV) .agentctl .pytest_cache .ruff_cache dist build
