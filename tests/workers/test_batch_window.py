"""BatchWindow's decision: wait for another job only while one is due (clients of just-stored
jobs not back yet) or recent arrivals say one is coming, never past the window or a full batch;
a fixed window is always waited out."""

from __future__ import annotations

import time

import pytest

from workers.batch_window import HORIZON_MIN_S, BatchWindow, entry_seconds


def ids(*milliseconds: int) -> list[str]:
    return [f"{ms}-0" for ms in milliseconds]


def test_entry_ids_carry_the_server_time_of_the_arrival() -> None:
    assert entry_seconds("1700000000123-7") == 1700000000.123


def test_with_no_history_a_lone_job_starts_at_once() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    window.arrived(ids(10_000))
    assert not window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)


def test_a_burst_is_waited_for_until_its_gaps_are_exceeded() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    # Closed-loop clients answered together: bursts of 4 (2 ms apart) every 500 ms.
    window.arrived(ids(*(start + 2 * k for start in (0, 500, 1000) for k in range(4))))
    window.arrived(ids(1500))  # the first of the next burst
    assert window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.001)
    assert window.keep_waiting(3, waited_s=0.004, since_arrival_s=0.0015)
    # 10 ms without an arrival: longer than every gap inside a burst.
    assert not window.keep_waiting(3, waited_s=0.012, since_arrival_s=0.010)


def test_jobs_spaced_wider_than_the_window_are_not_waited_for() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=10)
    window.arrived(ids(*range(0, 1000, 150)))  # one client: a job every 150 ms
    assert not window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)


def test_gaps_older_than_the_horizon_are_forgotten() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    window.arrived(ids(*range(0, 40, 2)))  # a busy burst ...
    quiet_ms = int(HORIZON_MIN_S * 1000) + 1000
    window.arrived(ids(38 + quiet_ms))  # ... then a quiet spell, then a lone job
    assert window.recent_gaps() == [pytest.approx(quiet_ms / 1000)]
    assert not window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)


def test_the_window_is_capped_by_the_predicted_batch_time() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    assert window.window_s(2) == 0.05
    window.ran(images=4, seconds=0.02)  # 5 ms per image
    assert window.window_s(2) == 0.01
    window.arrived(ids(*range(0, 100, 1)))  # a job every millisecond
    assert window.keep_waiting(2, waited_s=0.005, since_arrival_s=0.0)
    assert not window.keep_waiting(2, waited_s=0.011, since_arrival_s=0.0)


def test_a_full_batch_never_waits() -> None:
    window = BatchWindow(max_batch=2, max_wait_ms=50, adaptive=False)
    assert window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)
    assert not window.keep_waiting(2, waited_s=0.0, since_arrival_s=0.0)


def test_a_fixed_window_waits_it_out_whatever_arrived() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50, adaptive=False)
    window.ran(images=1, seconds=0.001)  # no cap from the batch time either
    assert window.keep_waiting(1, waited_s=0.049, since_arrival_s=0.049)
    assert not window.keep_waiting(1, waited_s=0.05, since_arrival_s=0.05)


def test_jobs_just_stored_are_waited_for_until_their_clients_are_back() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    window.handed_over(4)
    assert window.returns_due() == 4  # due while the store is under way
    window.finished(4, stored_at=100.0)
    window.arrived(ids(100_005))
    assert window.returns_due() == 3
    assert window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)
    window.arrived(ids(100_006, 100_007, 100_009))
    assert window.returns_due() == 0
    assert not window.keep_waiting(4, waited_s=0.007, since_arrival_s=0.003)


def test_a_lone_clients_next_job_closes_its_own_mark_and_starts_at_once() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    for n in range(5):  # one client, one job at a time
        window.handed_over(1)
        window.finished(1, stored_at=100.0 + n)
        window.arrived(ids(100_000 + 1000 * n + 8))
        assert not window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)


def test_jobs_queued_before_the_store_close_no_mark() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    window.finished(2, stored_at=100.0)
    window.arrived(ids(99_900, 99_950))  # queued during the batch, read after its store
    assert window.returns_due() == 2


def test_a_client_back_before_its_store_was_heard_of_closes_the_mark() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=50)
    window.handed_over(1)
    window.arrived(ids(100_010))  # the result thread has not reported the store yet
    window.finished(1, stored_at=100.0)
    assert window.returns_due() == 0


def test_marks_expire_after_the_window_and_teach_that_clients_do_not_return() -> None:
    window = BatchWindow(max_batch=8, max_wait_ms=5)
    for n in range(12):  # open-loop traffic: no client comes back after its result
        window.finished(1, stored_at=100.0 + n)
        time.sleep(0.006)
        assert window.returns_due() == 0
    window.finished(1, stored_at=200.0)
    assert 0 < window.returns_due() < 0.5
    assert not window.keep_waiting(1, waited_s=0.0, since_arrival_s=0.0)
