"""Fixtures of the deployment checks: the compose model as ``docker-compose config`` prints it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.deploy.deploy_files import COMPOSE_CPU_FILE, COMPOSE_FILE, compose_config


@pytest.fixture(scope="session")
def gpu_stack() -> dict[str, Any]:
    """docker-compose.yml alone: the GPU deployment."""
    return compose_config(COMPOSE_FILE)


@pytest.fixture(scope="session")
def cpu_stack() -> dict[str, Any]:
    """docker-compose.yml merged with docker-compose.cpu.yml: the laptop deployment."""
    return compose_config(COMPOSE_FILE, COMPOSE_CPU_FILE)
