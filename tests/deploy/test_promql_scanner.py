"""The PromQL scanner the deploy tests use to find the series names a query depends on."""

from __future__ import annotations

import pytest

from tests.deploy.deploy_files import grouping_labels, label_matchers, series_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.99, sum by (le, stage) "
            "(rate(olss_job_inference_seconds_bucket[$__rate_interval])))",
            {"olss_job_inference_seconds_bucket"},
        ),
        (
            'sum by (status) (rate(olss_request_duration_seconds_count{status=~"[45].."}[5m]))'
            " / ignoring (status) group_left sum(rate(olss_request_duration_seconds_count[5m]))",
            {"olss_request_duration_seconds_count"},
        ),
        ('max(olss_workers) < 1 or absent(up{job="worker"} == 1)', {"olss_workers", "up"}),
        ("deriv(max(olss_queue_depth)[5m:30s]) > 0 and max(olss_queue_depth) > 0",
         {"olss_queue_depth"}),
        ("olss_typo_metric offset 5m * 1e3", {"olss_typo_metric"}),
        ('{__name__="olss_x"} + 2', set()),
    ],
)
def test_series_names_are_the_selected_series_only(expr: str, names: set[str]) -> None:
    assert series_names(expr) == names


def test_label_matchers_keep_series_label_operator_and_value() -> None:
    matchers = label_matchers('sum(rate(olss_job_e2e_seconds_bucket{le=~"1|1.0", job!="x"}[5m]))')
    assert [(m.series, m.label, m.op, m.value) for m in matchers] == [
        ("olss_job_e2e_seconds_bucket", "le", "=~", "1|1.0"),
        ("olss_job_e2e_seconds_bucket", "job", "!=", "x"),
    ]
    assert matchers[0].matches("1.0") and matchers[0].matches("1")
    assert not matchers[0].matches("10.0")
    assert matchers[1].matches("y") and not matchers[1].matches("x")


def test_grouping_labels_come_from_by_and_without_only() -> None:
    expr = "sum by (le, stage) (x) / ignoring (status) group_left sum without (pod) (y)"
    assert grouping_labels(expr) == {"le", "stage", "pod"}
