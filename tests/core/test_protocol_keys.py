"""The keys of webhooks and of a caller's jobs are Redis Cluster safe: ``ENQUEUE`` writes them
in the step that makes the job, so they hash to the job's model slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from olss_core import keys


@pytest.mark.parametrize("model", ["olss-digits", "stabilityai/stable-diffusion-xl-base-1.0"])
@pytest.mark.parametrize("owner", [None, "ab" * 32])
def test_webhook_and_caller_keys_share_the_jobs_slot(model: str, owner: str | None) -> None:
    job_id = keys.new_job_id(model)
    slots = {key_slot(key.encode()) for key in (
        keys.job_key(job_id), keys.jobs_stream(model), keys.caller_jobs_zset(model, owner),
        keys.webhooks_stream(model), keys.webhook_progress_key(job_id),
    )}
    assert len(slots) == 1


def test_callers_without_a_key_share_one_set_and_keys_do_not() -> None:
    anonymous = keys.caller_jobs_zset("m", None)
    assert anonymous.endswith(f":caller:{keys.ANONYMOUS}")
    assert keys.caller_jobs_zset("m", "a" * 64) != keys.caller_jobs_zset("m", "b" * 64)
