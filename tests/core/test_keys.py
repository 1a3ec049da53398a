"""Redis keys: every key one Lua script or MULTI touches hashes to one Redis Cluster slot."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from olss_core import keys

MODELS = ["olss-digits", "stabilityai/stable-diffusion-xl-base-1.0", "a model/with spaces"]


def slot(key: str) -> int:
    return key_slot(key.encode())


@pytest.mark.parametrize("model", MODELS)
def test_a_jobs_keys_share_its_models_slot(model: str) -> None:
    job_id = keys.new_job_id(model)
    per_model = [keys.jobs_stream(model), keys.queued_zset(model), keys.dead_stream(model),
                 keys.idempotency_key(model, "digest")]
    per_job = [keys.job_key(job_id), keys.events_key(job_id), keys.image_key(job_id, 3),
               keys.cancel_key(job_id)]
    assert {slot(key) for key in per_model + per_job} == {slot(keys.jobs_stream(model))}


def test_models_get_distinct_tags_and_a_job_id_names_its_model() -> None:
    tags = {keys.model_tag(model) for model in MODELS}
    assert len(tags) == len(MODELS)
    job_id = keys.new_job_id(MODELS[1])
    assert keys.job_tag(job_id) == keys.model_tag(MODELS[1])
    assert keys.new_job_id(MODELS[1]) != job_id


def test_the_fleet_keys_share_one_slot() -> None:
    fleet = [keys.WORKERS_SET, keys.MODELS_SET, keys.worker_key("w-1"), keys.worker_key("w-2")]
    assert len({slot(key) for key in fleet}) == 1


@pytest.mark.parametrize("job_id", ["", "abc", "../../etc/passwd", "0123456789-xyz",
                                    "0123456789-" + "0" * 31, "0123456789" + "0" * 33])
def test_a_malformed_job_id_has_no_keys(job_id: str) -> None:
    with pytest.raises(keys.InvalidJobId):
        keys.job_key(job_id)
