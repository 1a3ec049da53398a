"""docker-compose.yml and its CPU override: valid, healthy, wired to each other and to Prometheus.

``docker-compose config`` (Debian's docker-compose 1.29) validates the files against the Compose
specification offline; the tests then read the merged, interpolated model it prints.
"""

from __future__ import annotations

from typing import Any

import pytest

from olss_core.settings import Settings
from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    COMPOSE_SDXL_FILE,
    TEST_GRAFANA_PASSWORD,
    compose_config,
    compose_config_run,
    mounts,
    published,
    published_ports,
    redis_bytes,
    scrape_job,
    settings_from,
    unknown_settings,
)

STACK_SERVICES = {"redis", "gateway", "worker", "prometheus", "grafana"}
NO_HEALTHCHECK_LABEL = "olss.no-healthcheck"
# Services meant to be reached from other machines: the API, and Grafana (it has a login).
PUBLIC_SERVICES = {"gateway", "grafana"}
SDXL_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


@pytest.fixture(params=["gpu", "cpu"])
def stack(request: pytest.FixtureRequest) -> dict[str, Any]:
    return request.getfixturevalue(f"{request.param}_stack")


def started_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that `docker compose up` starts: those in no profile."""
    return {name: s for name, s in stack["services"].items() if not s.get("profiles")}


def worker_services(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in started_services(stack).items() if "OLSS_DEVICE" in env(s)}


def env(service: dict[str, Any]) -> dict[str, str]:
    return {key: str(value) for key, value in (service.get("environment") or {}).items()}


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The service's ``OLSS_*`` environment read by the project's own ``Settings``."""
    return settings_from(dict(env(service)), monkeypatch)


def worker_scrape_port() -> int:
    (sd,) = scrape_job("worker")["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    return int(sd["port"])


def test_the_validator_rejects_an_unknown_service_key(tmp_path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("  redis:\n", "  redis:\n    imgae: x\n", 1))
    result = compose_config_run(broken, env={"GRAFANA_ADMIN_PASSWORD": TEST_GRAFANA_PASSWORD})
    assert result.returncode != 0 and "imgae" in result.stderr, result.stderr


def test_gpu_stack_has_the_whole_system(gpu_stack: dict[str, Any]) -> None:
    assert set(started_services(gpu_stack)) == STACK_SERVICES


def test_every_service_has_a_healthcheck_or_a_stated_reason(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        check = service.get("healthcheck", {})
        reason = (service.get("labels") or {}).get(NO_HEALTHCHECK_LABEL, "").strip()
        has_check = bool(check.get("test")) and not check.get("disable") and check["test"] != [
            "NONE"
        ]
        assert has_check or reason, f"{name}: no healthcheck and no {NO_HEALTHCHECK_LABEL} label"


def test_redis_7_appends_every_write_to_a_volume(gpu_stack: dict[str, Any]) -> None:
    redis = gpu_stack["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    (data,) = [m for m in mounts(redis) if m.target == "/data"]
    assert not data.is_bind and data.source in gpu_stack["volumes"] and not data.read_only


def test_gateway_serves_8000_and_its_healthcheck_asks_readyz(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = stack["services"]["gateway"]
    settings = settings_of(gateway, monkeypatch)
    assert settings.gateway_port == 8000 and settings.gateway_host == "0.0.0.0"
    assert published_ports(gateway) == {8000: 8000}
    probe = " ".join(gateway["healthcheck"]["test"])
    assert "127.0.0.1:8000/readyz" in probe


def test_gpu_worker_reserves_an_nvidia_gpu(gpu_stack: dict[str, Any]) -> None:
    devices = gpu_stack["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_gpu_worker_serves_stable_diffusion_1_5_from_volumes(
    gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = gpu_stack["services"]["worker"]
    settings = settings_of(worker, monkeypatch)
    assert settings.model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    named = {m.target: m.source for m in mounts(worker) if not m.is_bind}
    for path in (env(worker)["HF_HOME"], str(settings.schedule_dir), str(settings.cache_dir)):
        assert named.get(path) in gpu_stack["volumes"], f"{path} is not on a named volume"


def test_olss_settings_in_compose_are_known_and_valid(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, service in stack["services"].items():
        assert not unknown_settings(dict(env(service))), name
        settings_of(service, monkeypatch)


def test_workers_serve_metrics_where_prometheus_looks(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = worker_scrape_port()
    workers = worker_services(stack)
    assert workers
    for name, service in workers.items():
        settings = settings_of(service, monkeypatch)
        assert settings.worker_metrics_host == "0.0.0.0", name
        assert settings.worker_metrics_port == port, name
        assert f"127.0.0.1:{port}/metrics" in " ".join(service["healthcheck"]["test"]), name
        aliases = (service.get("networks") or {}).get("default", {}) or {}
        assert name == "worker" or "worker" in aliases.get("aliases", []), (
            f"{name} does not answer to the DNS name Prometheus discovers"
        )


def test_prometheus_scrapes_the_gateway_service_port(
    gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = scrape_job("gateway")
    port = settings_of(gpu_stack["services"]["gateway"], monkeypatch).gateway_port
    assert job["static_configs"][0]["targets"] == [f"gateway:{port}"]


def test_gateway_and_workers_agree_on_the_model(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway_model = settings_of(stack["services"]["gateway"], monkeypatch).model
    for name, service in worker_services(stack).items():
        assert settings_of(service, monkeypatch).model == gateway_model, name


def test_sdxl_override_serves_sdxl_on_the_gpu_in_gateway_and_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sdxl = compose_config(COMPOSE_FILE, COMPOSE_SDXL_FILE)
    assert settings_of(sdxl["services"]["gateway"], monkeypatch).model == SDXL_MODEL
    workers = worker_services(sdxl)
    assert workers
    for name, service in workers.items():
        assert settings_of(service, monkeypatch).model == SDXL_MODEL, name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in device["capabilities"] for device in devices), name


def test_cpu_override_runs_the_embedded_model_without_a_gpu(
    cpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    started = started_services(cpu_stack)
    assert STACK_SERVICES - {"worker"} <= set(started)
    for name, service in started.items():
        reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        assert not reservations.get("devices"), f"{name} still reserves a GPU"
    from workers.embedded_model import DEFAULT_MODEL

    (worker,) = worker_services(cpu_stack).values()
    settings = settings_of(worker, monkeypatch)
    assert (settings.model, settings.device) == (DEFAULT_MODEL, "cpu")
    assert "worker" not in started, "the GPU worker must not start in the CPU stack"


def test_grafana_lets_anonymous_viewers_in(gpu_stack: dict[str, Any]) -> None:
    grafana = gpu_stack["services"]["grafana"]
    assert env(grafana)["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env(grafana)["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert published_ports(grafana) == {3000: 3000}
    assert published_ports(gpu_stack["services"]["prometheus"]) == {9090: 9090}


def test_redis_is_not_published(stack: dict[str, Any]) -> None:
    assert published(stack["services"]["redis"]) == []


def test_only_the_gateway_and_grafana_listen_on_every_interface(stack: dict[str, Any]) -> None:
    for name, service in stack["services"].items():
        for port in published(service):
            assert not port.all_interfaces or name in PUBLIC_SERVICES, (
                f"{name} publishes {port.host_port} on every interface"
            )


def test_prometheus_lifecycle_api_is_on_loopback_only(gpu_stack: dict[str, Any]) -> None:
    prometheus = gpu_stack["services"]["prometheus"]
    assert "--web.enable-lifecycle" in prometheus["command"]
    assert [(p.host_ip, p.container_port) for p in published(prometheus)] == [("127.0.0.1", 9090)]


def test_redis_refuses_writes_when_full_rather_than_evict(gpu_stack: dict[str, Any]) -> None:
    command = gpu_stack["services"]["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis_bytes(command[command.index("--maxmemory") + 1]) >= 2 * 1024**3


def test_redis_maxmemory_follows_redis_maxmemory() -> None:
    stack = compose_config(COMPOSE_FILE, env={"REDIS_MAXMEMORY": "512mb"})
    command = stack["services"]["redis"]["command"]
    assert command[command.index("--maxmemory") + 1] == "512mb"


def test_grafana_needs_an_admin_password() -> None:
    result = compose_config_run(COMPOSE_FILE)
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr, result.stderr


def test_grafana_admin_password_is_the_one_given(gpu_stack: dict[str, Any]) -> None:
    grafana = env(gpu_stack["services"]["grafana"])
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == TEST_GRAFANA_PASSWORD


def test_api_keys_are_off_unless_olss_api_keys_is_set(
    gpu_stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings_of(gpu_stack["services"]["gateway"], monkeypatch).api_keys == []
    keyed = compose_config(COMPOSE_FILE, env={"OLSS_API_KEYS": "key-one,key-two"})
    settings = settings_of(keyed["services"]["gateway"], monkeypatch)
    assert settings.api_keys == ["key-one", "key-two"]


def test_only_workers_mount_the_worker_volumes(stack: dict[str, Any]) -> None:
    """A new named volume takes the owner of the folder it is first mounted on: only the worker
    image has these folders, owned by its non-root user."""
    workers = worker_services(stack)
    worker_volumes = {m.source for s in workers.values() for m in mounts(s) if not m.is_bind}
    for name, service in stack["services"].items():
        if name not in workers and "OLSS_DEVICE" not in env(service):
            shared = {m.source for m in mounts(service)} & worker_volumes
            assert not shared, f"{name} mounts the worker volumes {shared}"

