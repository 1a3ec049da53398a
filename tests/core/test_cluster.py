"""The job lifecycle on a real three-node Redis Cluster: every transition of the state machine
and the worker's lifecycle behaviours (run, lease expiry and claim, retry, dead-letter, cancel,
hand-back) pass on the cluster as on one server.

The tests are those of ``tests/core/test_job_states.py`` and ``tests/workers/test_lifecycle.py``,
collected here again with ``db`` and ``settings`` on the cluster: each Lua script and MULTI they
drive touches one hash slot, or the cluster refuses it (``CROSSSLOT``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from olss_core.keys import job_key, jobs_stream, new_job_id
from olss_core.redis_clients import RedisTarget, sync_client
from olss_core.settings import Settings
from tests.core.test_job_states import (  # noqa: F401 (collected here, on the cluster)
    test_a_finished_job_does_not_start_again,
    test_every_transition_the_services_make_is_in_the_table,
)
from tests.support.queued_jobs import MODEL
from tests.support.redis_cluster import RedisClusterNodes
from tests.workers.test_lifecycle import (  # noqa: F401 (collected here, on the cluster)
    LEASE_MS,
    test_a_batch_is_stored_acknowledged_and_announced_in_one_step,
    test_a_cancel_asked_while_running_is_honoured_on_redelivery,
    test_a_dead_workers_job_is_claimed_after_the_lease,
    test_a_failing_job_is_retried_then_dead_lettered,
    test_a_live_worker_keeps_its_lease,
    test_a_stopping_worker_hands_back_unstarted_jobs,
    test_after_step_records_the_step_of_the_sent_jobs_and_reports_cancels,
    test_past_the_attempt_limit_a_job_is_dead_lettered,
    test_started_events_carry_the_attempt_counted_by_start,
    test_success_stores_images_and_acknowledges,
)


@pytest.fixture()
def settings(cluster: RedisClusterNodes) -> Settings:
    return Settings(redis_url=cluster.url, redis_cluster=True, lease_ms=LEASE_MS, max_attempts=2)


@pytest.fixture()
def db(settings: Settings) -> Iterator[redis.RedisCluster]:
    """A cluster client; every primary is empty before and after."""
    client = sync_client(RedisTarget.of(settings))
    client.flushdb(target_nodes=redis.RedisCluster.PRIMARIES)
    try:
        yield client
    finally:
        client.flushdb(target_nodes=redis.RedisCluster.PRIMARIES)
        client.close()


def test_the_model_under_test_and_a_job_live_on_one_node(db: redis.RedisCluster) -> None:
    """What makes the tests above mean something: the stream and a job of the model hash to
    one slot, and not every model's keys sit on the node the URL names."""
    assert db.keyslot(jobs_stream(MODEL)) == db.keyslot(job_key(new_job_id(MODEL)))
    slots = {db.keyslot(jobs_stream(f"model-{n}")) for n in range(12)}
    owners = {db.get_node_from_key(jobs_stream(f"model-{n}")).name for n in range(12)}
    assert len(slots) == 12 and len(owners) > 1
