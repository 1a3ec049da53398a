"""deploy/k8s: every kustomization renders offline, every built-in resource is valid against the
Kubernetes schemas, and the manifests agree with the code.

``kubectl kustomize`` renders the base and each overlay as ``kubectl apply -k`` would;
``kubernetes-validate`` checks each built-in resource against the API's JSON schemas (strict:
an unknown field fails). KEDA and Prometheus Operator objects have no schema here and are checked
field by field. The KEDA triggers must watch the stream and consumer group a worker of their
target's model reads (``olss_core.keys``), the probes must ask the ports the settings open, and
the volumes worker replicas share must be shared.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from olss_core.keys import GROUP, jobs_stream
from olss_core.redis_clients import RedisTarget
from olss_core.settings import Settings
from schedules.registry import model_key
from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    DASHBOARD,
    DOCKER_DIR,
    compose_config,
    dashboard_queries,
    image_user,
    kubernetes_bytes,
    label_matchers,
    load_dashboard,
    redis_bytes,
    seconds,
    settings_from,
    unknown_settings,
)
from tests.deploy.k8s_files import (
    BASE,
    BUILT_IN_GROUPS,
    CLUSTER_KINDS,
    K8S_DIR,
    OVERLAYS,
    Rendering,
    all_kustomizations,
    applied_roots,
    group_of,
    kustomize,
    mounted_claim,
    only_container,
    redis_endpoint,
    render,
    selects,
)
from workers.embedded_model import resolve_model
from workers.metrics_server import READY_PATH

# The oldest Kubernetes the README claims, and the newest the schemas know.
KUBERNETES_VERSIONS = ["1.30", kubernetes_validate.latest_version()]
CUSTOM_KINDS = {
    ("keda.sh", "ScaledObject"),
    ("keda.sh", "TriggerAuthentication"),
    ("monitoring.coreos.com", "PodMonitor"),
}
KEDA_API = "keda.sh/v1alpha1"
GPU = "nvidia.com/gpu"
COMPONENT = "app.kubernetes.io/component"
# Single-node clusters (kind, minikube): ReadWriteOnce volumes are shared by the node's pods.
SINGLE_NODE = {"overlays/cpu"}
CPU_ONLY = {"overlays/cpu"}
# Where Redis runs in the namespace (these overlays take it from a Secret).
EXTERNAL_REDIS = {"external-redis", "redis-cluster", "redis-sentinel"}
IN_CLUSTER_REDIS = [root for root in applied_roots() if root.name not in EXTERNAL_REDIS]
# KEDA's trigger for each Redis topology the settings name (olss_core.redis_clients).
TRIGGER_OF_TOPOLOGY = {"standalone": "redis-streams", "cluster": "redis-cluster-streams",
                       "sentinel": "redis-sentinel-streams"}


@pytest.fixture(scope="module", params=applied_roots(), ids=lambda p: p.name)
def rendering(request: pytest.FixtureRequest) -> Rendering:
    return render(request.param)


@pytest.fixture(scope="module")
def overlay() -> dict[str, Rendering]:
    return {root.name: render(root) for root in applied_roots() if root.parent == OVERLAYS}


def component(rendering: Rendering, kind: str, name: str) -> list[dict[str, Any]]:
    return [r for r in rendering.of_kind(kind) if r["metadata"]["labels"].get(COMPONENT) == name]


def workers(rendering: Rendering) -> list[dict[str, Any]]:
    found = component(rendering, "Deployment", "worker")
    assert found, f"{rendering.name} has no worker Deployment"
    return found


def gateway(rendering: Rendering) -> dict[str, Any]:
    (found,) = component(rendering, "Deployment", "gateway")
    return found


def env_of(rendering: Rendering, workload: dict[str, Any]) -> dict[str, str | None]:
    return rendering.container_env(only_container(workload["spec"]["template"]))


def settings_of(
    rendering: Rendering, workload: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Settings:
    return settings_from(env_of(rendering, workload), monkeypatch)


def port_number(container: dict[str, Any], port: str | int) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def scaled_targets(rendering: Rendering) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """``(ScaledObject, the Deployment it scales)`` pairs."""
    pairs = []
    for scaled in rendering.of_kind("ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment", scaled["metadata"]["name"]
        pairs.append((scaled, rendering.get("Deployment", target["name"])))
    return pairs


def the_trigger(scaled: dict[str, Any]) -> dict[str, Any]:
    (trigger,) = scaled["spec"]["triggers"]
    return trigger


@pytest.mark.parametrize("root", all_kustomizations(), ids=lambda p: str(p.relative_to(K8S_DIR)))
def test_every_kustomization_renders(root: Path) -> None:
    result = kustomize(root)
    assert result.returncode == 0, result.stderr
    assert "kind:" in result.stdout


def test_built_in_resources_are_valid_kubernetes(rendering: Rendering) -> None:
    for resource in rendering.resources:
        kind = (group_of(resource), resource["kind"])
        if kind[0] not in BUILT_IN_GROUPS:
            assert kind in CUSTOM_KINDS, f"{rendering.name}: no check for {kind}"
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(resource, version, strict=True)


def test_the_schemas_reject_an_unknown_field() -> None:
    deployment = copy.deepcopy(gateway(render(BASE)))
    only_container(deployment["spec"]["template"])["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_everything_is_in_one_namespace_that_is_created(rendering: Rendering) -> None:
    namespaced = [r for r in rendering.resources if r["kind"] not in CLUSTER_KINDS]
    namespaces = {r["metadata"].get("namespace") for r in namespaced}
    assert len(namespaces) == 1 and None not in namespaces, namespaces
    assert rendering.find("Namespace", next(iter(namespaces))) is not None


def test_each_deployment_selects_only_its_own_pods(rendering: Rendering) -> None:
    workloads = rendering.of_kind("Deployment") + rendering.of_kind("StatefulSet")
    for workload in workloads:
        selector = workload["spec"]["selector"]["matchLabels"]
        matched = [w for w in workloads if selects(selector, w["spec"]["template"]["metadata"]
                                                   ["labels"])]
        assert matched == [workload], f"{workload['metadata']['name']} selects {len(matched)}"


def test_olss_settings_are_known_and_valid(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload in [gateway(rendering), *workers(rendering)]:
        assert not unknown_settings(env_of(rendering, workload)), workload["metadata"]["name"]
        settings_of(rendering, workload, monkeypatch)


def test_pods_run_as_the_images_user(rendering: Rendering) -> None:
    for workload, image in [(gateway(rendering), "gateway")] + [
        (w, "worker") for w in workers(rendering)
    ]:
        context = workload["spec"]["template"]["spec"]["securityContext"]
        uid = image_user(DOCKER_DIR / f"{image}.Dockerfile").uid
        assert context["runAsNonRoot"] and context["runAsUser"] == uid
    for worker in workers(rendering):
        assert worker["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == uid


# -- the gateway --------------------------------------------------------------------------------


def test_gateway_probes_readyz_and_healthz_on_its_port(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = gateway(rendering)
    container = only_container(deployment["spec"]["template"])
    settings = settings_of(rendering, deployment, monkeypatch)
    assert settings.gateway_host == "0.0.0.0"
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and port_number(container, get["port"]) == settings.gateway_port
    (service,) = component(rendering, "Service", "gateway")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port_number(container, port["targetPort"]) == settings.gateway_port
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    if "prometheus.io/port" in annotations:
        assert int(annotations["prometheus.io/port"]) == settings.gateway_port


def test_a_disruption_budget_keeps_a_gateway_serving(rendering: Rendering) -> None:
    deployment = gateway(rendering)
    (budget,) = [
        b for b in rendering.of_kind("PodDisruptionBudget")
        if selects(b["spec"]["selector"]["matchLabels"],
                   deployment["spec"]["template"]["metadata"]["labels"])
    ]
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_a_stopping_gateway_drains_its_requests(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preStop pause, then uvicorn's drain (the sync wait plus 5 s, olss_cli.main)."""
    deployment = gateway(rendering)
    pod = deployment["spec"]["template"]["spec"]
    pause = only_container(deployment["spec"]["template"])["lifecycle"]["preStop"]["exec"]
    assert pause["command"][0] == "sleep"
    drain = settings_of(rendering, deployment, monkeypatch).sync_timeout_s + 5
    assert pod["terminationGracePeriodSeconds"] >= float(pause["command"][1]) + drain


def test_the_gateways_default_model_is_one_a_worker_serves(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = {settings_of(rendering, w, monkeypatch).model for w in workers(rendering)}
    assert settings_of(rendering, gateway(rendering), monkeypatch).model in served


# -- the workers --------------------------------------------------------------------------------


def test_gpu_workers_get_one_gpu_each(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for worker in workers(rendering):
        limits = only_container(worker["spec"]["template"])["resources"]["limits"]
        device = settings_of(rendering, worker, monkeypatch).device
        if rendering.name in CPU_ONLY:
            assert device == "cpu" and GPU not in limits
        else:
            assert device == "cuda" and int(limits[GPU]) == 1


def test_worker_replicas_share_the_model_cache_and_the_schedules(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for worker in workers(rendering):
        template = worker["spec"]["template"]
        env = env_of(rendering, worker)
        schedules = settings_of(rendering, worker, monkeypatch).schedule_dir
        for path in (env["HF_HOME"], str(schedules)):
            claim = mounted_claim(template, path)
            assert claim, f"{worker['metadata']['name']}: {path} is on no volume claim"
            modes = rendering.get("PersistentVolumeClaim", claim)["spec"]["accessModes"]
            shared = "ReadWriteOnce" if rendering.name in SINGLE_NODE else "ReadWriteMany"
            assert shared in modes, f"{claim}: {modes}"


def test_a_stopping_worker_has_at_least_the_compose_grace_period(rendering: Rendering) -> None:
    compose_grace = seconds(compose_config(COMPOSE_FILE)["services"]["worker"]["stop_grace_period"])
    for worker in workers(rendering):
        assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= compose_grace


def test_worker_probes_and_scrape_annotations_name_its_metrics_port(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for worker in workers(rendering):
        template = worker["spec"]["template"]
        container = only_container(template)
        settings = settings_of(rendering, worker, monkeypatch)
        assert settings.worker_metrics_host == "0.0.0.0"
        for probe, path in (("startupProbe", READY_PATH), ("readinessProbe", READY_PATH),
                            ("livenessProbe", "/metrics")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, probe
            assert port_number(container, get["port"]) == settings.worker_metrics_port
        annotations = template["metadata"].get("annotations", {})
        if "prometheus.io/port" in annotations:
            assert int(annotations["prometheus.io/port"]) == settings.worker_metrics_port


# -- KEDA ---------------------------------------------------------------------------------------


def test_every_worker_deployment_has_one_scaled_object(rendering: Rendering) -> None:
    targets = [deployment["metadata"]["name"] for _, deployment in scaled_targets(rendering)]
    assert sorted(targets) == sorted(w["metadata"]["name"] for w in workers(rendering))


def test_scaled_objects_use_the_lag_of_a_redis_stream(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for scaled, deployment in scaled_targets(rendering):
        assert scaled["apiVersion"] == KEDA_API
        trigger = the_trigger(scaled)
        topology = RedisTarget.of(settings_of(rendering, deployment, monkeypatch)).kind
        assert trigger["type"] == TRIGGER_OF_TOPOLOGY[topology], rendering.name
        assert int(trigger["metadata"]["lagCount"]) >= 1
        assert int(trigger["metadata"]["activationLagCount"]) >= 0
        spec = scaled["spec"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] and spec["maxReplicaCount"]


def test_triggers_watch_the_stream_and_group_the_workers_read(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for scaled, deployment in scaled_targets(rendering):
        model = settings_of(rendering, deployment, monkeypatch).model
        metadata = the_trigger(scaled)["metadata"]
        assert metadata["stream"] == jobs_stream(model_key(resolve_model(model))), model
        assert metadata["consumerGroup"] == GROUP


def test_the_lag_target_is_one_full_batch_per_replica(
    rendering: Rendering, monkeypatch: pytest.MonkeyPatch
) -> None:
    for scaled, deployment in scaled_targets(rendering):
        batch = settings_of(rendering, deployment, monkeypatch).max_batch_size
        assert int(the_trigger(scaled)["metadata"]["lagCount"]) == batch


def test_scaling_up_is_quick_and_down_is_slow(rendering: Rendering) -> None:
    for scaled, _ in scaled_targets(rendering):
        behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        up = behavior["scaleUp"]["stabilizationWindowSeconds"]
        down = behavior["scaleDown"]["stabilizationWindowSeconds"]
        assert up < down and down >= 300, (up, down)


@pytest.mark.parametrize("root", IN_CLUSTER_REDIS, ids=lambda p: p.name)
def test_keda_reaches_the_redis_the_workers_use(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KEDA's operator lives in its own namespace: an in-cluster Redis by its full name."""
    rendering = render(root)
    for scaled, deployment in scaled_targets(rendering):
        metadata = the_trigger(scaled)["metadata"]
        url = settings_of(rendering, deployment, monkeypatch).redis_url
        host, port, database = redis_endpoint(url)
        assert int(metadata.get("databaseIndex", 0)) == database
        service = rendering.get("Service", host)
        namespace = service["metadata"]["namespace"]
        assert metadata["address"] == f"{host}.{namespace}.svc.cluster.local:{port}"
        assert port in [p["port"] for p in service["spec"]["ports"]]


def test_workers_keep_one_replica_unless_scaled_to_zero(
    overlay: dict[str, Rendering], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = render(BASE)
    for scaled, _ in scaled_targets(base):
        assert scaled["spec"]["minReplicaCount"] == 1
    assert not settings_of(base, base.get("Deployment", "olss-gateway"),
                           monkeypatch).accept_sleeping_models
    sleepy = overlay["scale-to-zero"]
    for scaled, _ in scaled_targets(sleepy):
        assert scaled["spec"]["minReplicaCount"] == 0
        assert "activationLagCount" in the_trigger(scaled)["metadata"]
    # A model at zero still takes jobs (the lag that wakes it), and the gateway stays ready.
    gateway = sleepy.get("Deployment", "olss-gateway")
    assert settings_of(sleepy, gateway, monkeypatch).accept_sleeping_models


# -- Redis --------------------------------------------------------------------------------------


def redis_config(rendering: Rendering, statefulset: dict[str, Any]) -> dict[str, str]:
    """The redis.conf the StatefulSet's command names, from its ConfigMap."""
    pod = statefulset["spec"]["template"]["spec"]
    container = only_container(statefulset["spec"]["template"])
    path = Path(container["args"][1])
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    text = rendering.get("ConfigMap", volume["configMap"]["name"])["data"][path.name]
    lines = [line.split(None, 1) for line in text.splitlines()]
    return {words[0]: words[1] for words in lines if words and not words[0].startswith("#")}


def test_redis_7_appends_to_a_volume_and_never_evicts() -> None:
    rendering = render(BASE)
    (statefulset,) = rendering.of_kind("StatefulSet")
    container = only_container(statefulset["spec"]["template"])
    assert container["image"].startswith("redis:7")
    config = redis_config(rendering, statefulset)
    assert config["appendonly"] == "yes" and config["maxmemory-policy"] == "noeviction"
    limit = kubernetes_bytes(container["resources"]["limits"]["memory"])
    assert 0 < redis_bytes(config["maxmemory"]) < limit
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    data = [m for m in container["volumeMounts"] if m["name"] == claim["metadata"]["name"]]
    assert [m["mountPath"] for m in data] == [config["dir"]]


@pytest.mark.parametrize("root", IN_CLUSTER_REDIS, ids=lambda p: p.name)
def test_only_olss_pods_and_keda_reach_redis(root: Path) -> None:
    rendering = render(root)
    (statefulset,) = rendering.of_kind("StatefulSet")
    redis_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in rendering.of_kind("NetworkPolicy")
                 if selects(p["spec"]["podSelector"]["matchLabels"], redis_labels)]
    (rule,) = policy["spec"]["ingress"]
    pod_selectors = [p["podSelector"]["matchLabels"] for p in rule["from"] if "podSelector" in p]
    for template in rendering.pod_templates():
        if "OLSS_REDIS_URL" in rendering.container_env(only_container(template)):
            assert any(selects(s, template["metadata"]["labels"]) for s in pod_selectors)
    namespaces = [p["namespaceSelector"]["matchLabels"] for p in rule["from"]
                  if "namespaceSelector" in p]
    assert {"kubernetes.io/metadata.name": "keda"} in namespaces


@pytest.mark.parametrize("name", sorted(EXTERNAL_REDIS))
def test_external_redis_comes_from_one_secret(overlay: dict[str, Rendering], name: str) -> None:
    rendering = overlay[name]
    assert rendering.of_kind("StatefulSet") == []
    secrets = set()
    for workload in [gateway(rendering), *workers(rendering)]:
        (url,) = [v for v in only_container(workload["spec"]["template"])["env"]
                  if v["name"] == "OLSS_REDIS_URL"]
        secrets.add(url["valueFrom"]["secretKeyRef"]["name"])
    for scaled, _ in scaled_targets(rendering):
        trigger = the_trigger(scaled)
        assert "address" not in trigger["metadata"]
        auth = rendering.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {ref["parameter"]: ref["name"] for ref in auth["spec"]["secretTargetRef"]}
        assert "password" in refs and set(refs.values()) == secrets
        # Where KEDA connects: the server's address or the cluster's nodes from the Secret,
        # the Sentinels' addresses in the trigger (the ones the services are given).
        found_by = {"external-redis": "address", "redis-cluster": "addresses"}.get(name)
        assert found_by is None or found_by in refs, refs
        assert (found_by is None) == ("addresses" in trigger["metadata"])


def test_a_cluster_overlay_makes_every_process_a_cluster_client(
    overlay: dict[str, Rendering], monkeypatch: pytest.MonkeyPatch
) -> None:
    rendering = overlay["redis-cluster"]
    for workload in [gateway(rendering), *workers(rendering)]:
        settings = settings_of(rendering, workload, monkeypatch)
        assert RedisTarget.of(settings).kind == "cluster", workload["metadata"]["name"]
    for scaled, _ in scaled_targets(rendering):
        assert "databaseIndex" not in the_trigger(scaled)["metadata"]  # a cluster has only 0


def test_the_sentinel_overlay_gives_keda_the_services_sentinels(
    overlay: dict[str, Rendering], monkeypatch: pytest.MonkeyPatch
) -> None:
    rendering = overlay["redis-sentinel"]
    for scaled, deployment in scaled_targets(rendering):
        settings = settings_of(rendering, deployment, monkeypatch)
        metadata = the_trigger(scaled)["metadata"]
        assert metadata["addresses"].split(",") == settings.redis_sentinels
        assert metadata["sentinelMaster"] == settings.redis_sentinel_master
    for workload in [gateway(rendering), *workers(rendering)]:
        settings = settings_of(rendering, workload, monkeypatch)
        assert RedisTarget.of(settings).kind == "sentinel", workload["metadata"]["name"]


# -- monitoring ---------------------------------------------------------------------------------


def test_the_dashboard_configmap_is_the_dashboard_file() -> None:
    (dashboards,) = [c for c in render(BASE).of_kind("ConfigMap")
                     if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert dashboards["data"] == {DASHBOARD.name: DASHBOARD.read_text()}


def test_pod_monitors_scrape_every_pod_with_the_dashboards_job_names(
    overlay: dict[str, Rendering],
) -> None:
    rendering = overlay["prometheus-operator"]
    templates = rendering.pod_templates()
    jobs = set()
    for monitor in rendering.of_kind("PodMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        chosen = [t for t in templates if selects(spec["selector"]["matchLabels"],
                                                  t["metadata"]["labels"])]
        assert chosen, monitor["metadata"]["name"]
        for template in chosen:
            assert "prometheus.io/scrape" not in template["metadata"].get("annotations", {})
            names = {p["name"] for p in only_container(template)["ports"]}
            assert {e["port"] for e in spec["podMetricsEndpoints"]} <= names
            jobs.add(template["metadata"]["labels"][spec["jobLabel"]])
    scraped = {template["metadata"]["labels"][COMPONENT] for template in templates} - {"redis"}
    assert jobs == scraped
    wanted = {m.value for q in dashboard_queries(load_dashboard()) for m in label_matchers(q)
              if m.label == "job"}
    assert wanted <= jobs, wanted - jobs
