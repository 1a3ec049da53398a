"""Fixtures for the worker's parts on the real test Redis: one consumer ("worker-a") of the
``tiny-sd`` stream, its lease tracker and a fresh metrics registry."""

from __future__ import annotations

import pytest
import redis

from olss_core.metrics import WorkerMetrics
from olss_core.settings import Settings
from tests.support.queued_jobs import MODEL
from tests.support.redis_db import unit_settings
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle

LEASE_MS = 200
CONSUMER = "worker-a"


@pytest.fixture()
def settings() -> Settings:
    return unit_settings(lease_ms=LEASE_MS, max_attempts=2)


@pytest.fixture()
def lifecycle(db: redis.Redis, settings: Settings) -> JobLifecycle:
    lifecycle = JobLifecycle(db, settings, MODEL, CONSUMER)
    lifecycle.ensure_group()
    return lifecycle


@pytest.fixture()
def leases(lifecycle: JobLifecycle) -> LeaseTracker:
    return LeaseTracker(lifecycle)


@pytest.fixture()
def metrics() -> WorkerMetrics:
    return WorkerMetrics.create(MODEL)
