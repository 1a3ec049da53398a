"""Readers for deploy/k8s: each kustomization rendered by ``kubectl kustomize``, offline.

``kubectl kustomize`` builds a kustomization the way ``kubectl apply -k`` does, without a
cluster. A :class:`Rendering` is what one would apply; the helpers read its pod templates the way
the kubelet would (``env`` over ``envFrom``, ConfigMaps of the same rendering).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tests.deploy.deploy_files import ROOT, run_tool

K8S_DIR = ROOT / "deploy" / "k8s"
BASE = K8S_DIR / "base"
OVERLAYS = K8S_DIR / "overlays"
KUSTOMIZATION = "kustomization.yaml"
# Groups of Kubernetes' own kinds (the core group is ""): everything else is a custom resource.
BUILT_IN_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
}
# Kinds that live in no namespace.
CLUSTER_KINDS = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                 "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition"}


def kubectl() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is not on PATH (make deploy-tools says how to get it)"
    return path


def kustomize(root: Path) -> subprocess.CompletedProcess[str]:
    """``kubectl kustomize root``: the resources ``kubectl apply -k root`` would send."""
    return run_tool(kubectl(), "kustomize", root)


def applied_roots() -> list[Path]:
    """What a user applies: the base and every overlay (building blocks are checked through
    them)."""
    return [BASE, *sorted(p.parent for p in OVERLAYS.glob(f"*/{KUSTOMIZATION}"))]


def all_kustomizations() -> list[Path]:
    """Every kustomization under deploy/k8s, building blocks (core, worker, models) included."""
    return sorted(p.parent for p in K8S_DIR.rglob(KUSTOMIZATION))


def group_of(resource: dict[str, Any]) -> str:
    api_version = resource["apiVersion"]
    return api_version.split("/")[0] if "/" in api_version else ""


@dataclass(frozen=True)
class Rendering:
    """The resources one kustomization renders."""

    root: Path
    resources: list[dict[str, Any]]

    @property
    def name(self) -> str:
        return str(self.root.relative_to(K8S_DIR))

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["kind"] == kind]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [r for r in self.of_kind(kind) if r["metadata"]["name"] == name]
        assert len(found) <= 1, f"{self.name}: two {kind}s named {name}"
        return found[0] if found else None

    def get(self, kind: str, name: str) -> dict[str, Any]:
        resource = self.find(kind, name)
        assert resource is not None, f"{self.name}: no {kind} named {name}"
        return resource

    def pod_templates(self) -> list[dict[str, Any]]:
        """Pod templates of every workload."""
        workloads = self.of_kind("Deployment") + self.of_kind("StatefulSet")
        return [w["spec"]["template"] for w in workloads]

    def container_env(self, container: dict[str, Any]) -> dict[str, str | None]:
        """The container's environment: ``envFrom`` ConfigMaps, then ``env`` over them.

        A variable taken from a Secret (``valueFrom``) has the value None: it is set at run time.
        """
        values: dict[str, str | None] = {}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                values.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        for variable in container.get("env", []):
            values[variable["name"]] = variable.get("value")
        return values


def render(root: Path) -> Rendering:
    result = kustomize(root)
    assert result.returncode == 0, f"kubectl kustomize {root} failed:\n{result.stderr}"
    return Rendering(root, [r for r in yaml.safe_load_all(result.stdout) if r])


def only_container(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = template["spec"]["containers"]
    return container


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a ``matchLabels`` selector matches these labels."""
    return all(labels.get(key) == value for key, value in selector.items())


def mounted_claim(template: dict[str, Any], path: str) -> str | None:
    """The PersistentVolumeClaim mounted at ``path`` in the template's container, if any."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    for mount in only_container(template).get("volumeMounts", []):
        if mount["mountPath"] == path:
            claim = volumes[mount["name"]].get("persistentVolumeClaim")
            return claim["claimName"] if claim else None
    return None


def redis_endpoint(url: str) -> tuple[str, int, int]:
    """``(host, port, database)`` of a ``redis://`` URL."""
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or 6379, int(parts.path.strip("/") or 0)
