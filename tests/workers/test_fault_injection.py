"""The testing-only hooks: a marked prompt fails its batch; settings switch them on."""

from __future__ import annotations

import pytest

from tests.support.queued_jobs import job_spec
from tests.support.redis_db import unit_settings
from workers.fault_injection import FaultInjection, InjectedFault


def test_a_batch_holding_a_marked_prompt_fails_and_others_pass() -> None:
    faults = FaultInjection(fail_prompt="[[fail]]")
    faults.fail_marked([job_spec(prompt="fine"), job_spec(prompt="also fine")])
    with pytest.raises(InjectedFault, match="OLSS_TEST_FAIL_PROMPT"):
        faults.fail_marked([job_spec(prompt="fine"), job_spec(prompt="bad [[fail]]")])


def test_off_by_default_and_on_from_the_settings() -> None:
    FaultInjection.from_settings(unit_settings()).fail_marked([job_spec(prompt="[[fail]]")])
    faults = FaultInjection.from_settings(
        unit_settings(test_fail_prompt="[[fail]]", test_step_delay_ms=20)
    )
    assert faults == FaultInjection(fail_prompt="[[fail]]", step_delay_s=0.02)
