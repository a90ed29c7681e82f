# room-gateway tasks. Each sets up .venv itself (python3 -m venv, then pip), so a fresh clone needs only
# python3 >= 3.11 and make:
#   make run     install, then start a gateway on the embedded default (gateway.yaml, sqlite:///rooms.db)
#   make test    install with the dev extra (and chromium, nghttp), lint (ruff, mypy --strict, tsc on the
#                console), then run the tests (what CI runs: .ci/run)
#   make proto   regenerate gateway/_gen/ from protos/
#   make lint, make bench, make check

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tools run as `python -m …`, never through bin/ scripts, whose shebangs name the path the venv was made at.
#: Where `make run` keeps the key it generates when ROOM_API_SECRET_KEY is not set (git-ignored).
KEY_FILE := .room-gateway.key
#: Extra arguments: make run ARGS='--config config/hashed-keys.yaml', make test PYTEST_ARGS='-k server'
ARGS ?=
PYTEST_ARGS ?=

#: The browser tests' Chromium (tests/browsers): Debian's package, since `playwright install` cannot
#: download browsers everywhere.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
#: The console's type checker (tsc --checkJs over gateway/console), from its lock file.
CONSOLE_CHECK := tests/browsers/node

.PHONY: run test check lint proto bench clean chromium nghttp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps: install again when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	@if [ -z "$${ROOM_API_SECRET_KEY:-}" ]; then \
	    if [ ! -s $(KEY_FILE) ]; then (umask 077 && $(BIN)/python -m gateway keys new --raw > $(KEY_FILE)); fi; \
	    ROOM_API_SECRET_KEY=$$(cat $(KEY_FILE)); export ROOM_API_SECRET_KEY; \
	    echo "room-gateway: API key (kept in $(KEY_FILE)): $$ROOM_API_SECRET_KEY"; \
	fi; \
	exec $(BIN)/python -m gateway serve $(ARGS)

# The habits are part of the test: a lint or type error fails `make test`, and so CI, before pytest runs.
test: lint chromium nghttp
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Once, quietly. Where apt-get cannot install it, the browser tests say so and skip (they fail under CI).
chromium:
	@[ -x $(CHROMIUM) ] || { echo "installing chromium for tests/browsers (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq chromium >/dev/null 2>&1; } || \
	  echo "chromium could not be installed: tests/browsers will skip (and fail under CI)"; }

# docs/security.md's gRPC commands read the server's SETTINGS with nghttp (tests/security/test_grpc_docs.py).
nghttp:
	@command -v nghttp >/dev/null || { echo "installing nghttp2-client for the gRPC doc commands (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq >/dev/null 2>&1 && $(SUDO) apt-get install -y -qq nghttp2-client >/dev/null 2>&1; } || \
	  echo "nghttp2-client could not be installed: the gRPC doc commands' test will skip (and fail under CI)"; }

check: test

lint: $(VENV)/.installed-dev $(CONSOLE_CHECK)/node_modules/.installed
	$(BIN)/python -m ruff check gateway plugins tests scripts bench
	$(BIN)/python -m mypy
	node $(CONSOLE_CHECK)/node_modules/typescript/bin/tsc -p $(CONSOLE_CHECK)/tsconfig.json

$(CONSOLE_CHECK)/node_modules/.installed: $(CONSOLE_CHECK)/package-lock.json
	cd $(CONSOLE_CHECK) && npm ci --no-audit --no-fund --silent
	touch $@

proto: $(VENV)/.installed-dev
	$(BIN)/python scripts/genproto.py

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
