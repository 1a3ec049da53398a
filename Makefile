# olss-serve developer commands. `make test` works on a fresh machine: it builds .venv,
# installs the project with its dev extra, makes sure a real Redis answers, and runs every test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OLSS_REDIS_URL ?= redis://127.0.0.1:6379/0

# Exact versions of everything the dev extra needs (make lock writes them): installs are
# reproducible, and the gateway and worker images install their subsets of the same versions.
LOCKS := requirements
DEV_LOCK := $(LOCKS)/dev.lock

.PHONY: install lock test lint redis deploy-tools run bench clean

# The lock is complete (tests/deploy/test_lock.py), so nothing outside it is installed; pip check
# proves the installed set consistent. torch==2.13.0 takes its CPU build from the machine's disk.
$(VENV)/.installed: pyproject.toml $(DEV_LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-deps -r $(DEV_LOCK)
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m pip check
	touch $@

install: $(VENV)/.installed

# Resolve the lock files again after a dependency change in pyproject.toml (LOCK_ARGS=--upgrade
# for the newest releases): the dev lock, then the gateway's and the worker's as its subsets.
# pip-compile records the CPU torch it found on disk as torch==X+cpu; the locks say torch==X,
# which that build and the worker image's CUDA build both satisfy.
PIP_COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile --quiet --strip-extras \
	--no-emit-index-url --no-emit-find-links --unsafe-package olss-serve --unsafe-package pip
lock:
	@test -x $(VENV)/bin/pip-compile || { echo "make lock needs pip-tools: make install"; exit 1; }
	$(PIP_COMPILE) $(LOCK_ARGS) --extra dev -c $(LOCKS)/pins.txt -o $(DEV_LOCK) pyproject.toml
	$(PIP_COMPILE) --extra gateway -c $(DEV_LOCK) -o $(LOCKS)/gateway.lock pyproject.toml
	$(PIP_COMPILE) --extra worker -c $(DEV_LOCK) -o $(LOCKS)/worker.lock pyproject.toml
	sed -i -E 's/^(torch==[^+]+)\+cpu$$/\1/' $(LOCKS)/*.lock

lint: install
	$(VENV)/bin/ruff check .

# Start a private real Redis server when none answers at OLSS_REDIS_URL.
redis: install
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)
	$(PY) -m olss_cli.dev_redis ensure

# The offline deployment checks (tests/deploy) run promtool (Debian's prometheus package),
# docker-compose (Debian's, validates the compose files without a Docker engine) and kubectl
# (renders deploy/k8s with its built-in kustomize; the dev and CI machines' image has it).
DEPLOY_TOOLS := promtool docker-compose
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
deploy-tools:
	@for tool in $(DEPLOY_TOOLS); do command -v $$tool >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install \
			-y -qq --no-install-recommends prometheus docker-compose >/dev/null; \
	fi
	@command -v kubectl >/dev/null || { echo "tests/deploy need kubectl (1.27+): install it"; exit 1; }

test: install redis deploy-tools
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

run: install redis
	$(VENV)/bin/olss serve

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
