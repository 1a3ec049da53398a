"""docker/prometheus: promtool accepts the config and the rules, and the alerts fire when due.

The alert behaviour is pinned by promtool unit tests in tests/deploy/alerts_test.yml.
"""

from __future__ import annotations

from tests.deploy.deploy_files import (
    ALERT_RULES,
    ALERT_TESTS,
    PROMETHEUS_CONFIG,
    alert_rules,
    load_yaml,
    promtool,
    run_tool,
    scrape_job,
)


def test_promtool_accepts_the_config_and_finds_the_rule_file() -> None:
    result = run_tool(promtool(), "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_promtool_accepts_the_alert_rules() -> None:
    result = run_tool(promtool(), "check", "rules", ALERT_RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = run_tool(promtool(), "test", "rules", ALERT_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_where_it_fires() -> None:
    fired = {
        case["alertname"]
        for test in load_yaml(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never shown to fire"


def test_alerts_cover_latency_queue_workers_and_errors() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}
    latency = rules["OLSSLatencyP99High"]["expr"]
    assert "histogram_quantile(0.99" in latency and "olss_job_e2e_seconds_bucket" in latency
    assert latency.strip().endswith("> 2") and rules["OLSSLatencyP99High"]["for"] == "5m"
    assert "olss_queue_depth" in rules["OLSSQueueGrowing"]["expr"]
    assert rules["OLSSQueueGrowing"]["for"] == "5m"
    assert "olss_workers" in rules["OLSSNoWorkers"]["expr"]
    errors = rules["OLSSHigh5xxRate"]
    assert 'status=~"5.."' in errors["expr"] and errors["expr"].strip().endswith("> 0.01")


def test_workers_are_found_by_dns_on_the_compose_service_name() -> None:
    (discovery,) = scrape_job("worker")["dns_sd_configs"]
    assert (discovery["names"], discovery["type"]) == (["worker"], "A")
