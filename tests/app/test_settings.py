"""Settings come from OLSS_* variables and fail fast naming the bad one."""

from __future__ import annotations

import pytest

from olss_core.settings import ConfigError, load_settings


def test_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OLSS_REDIS_URL", "OLSS_GATEWAY_PORT", "OLSS_API_KEYS"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.gateway_port == 8000
    assert settings.api_keys == []


def test_api_keys_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLSS_API_KEYS", "alpha, beta,,gamma")
    assert load_settings().api_keys == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize(
    ("name", "value"),
    [("OLSS_MAX_BATCH_SIZE", "0"), ("OLSS_GATEWAY_PORT", "http"), ("OLSS_REDIS_URL", "localhost")],
)
def test_a_bad_setting_stops_start_up_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()
