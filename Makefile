# olss-serve developer commands. `make test` works on a fresh machine: it builds .venv,
# installs the project with its dev extra, makes sure a real Redis answers, and runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch 2.13.0 is on disk on the dev/CI machines; any torch>=2.1 works elsewhere.
TORCH_SPEC ?= torch==2.13.0
export OLSS_REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install test lint redis deploy-tools run bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(VENV)/bin/ruff check .

# Start a private real Redis server when none answers at OLSS_REDIS_URL.
redis: install
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PY) -m olss_cli.dev_redis ensure

# The offline deployment checks (tests/deploy) run promtool (Debian's prometheus package) and
# docker-compose (Debian's, validates the compose files without a Docker engine).
DEPLOY_TOOLS := promtool docker-compose
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
deploy-tools:
	@for tool in $(DEPLOY_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
			-y -qq --no-install-recommends prometheus docker-compose >/dev/null; \
	fi

test: install redis deploy-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

run: install redis
	$(VENV)/bin/olss serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
