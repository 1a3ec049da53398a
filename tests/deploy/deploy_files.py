"""Readers for the deployment files and the small PromQL scanner the deploy tests share.

The scanner finds which series names and label matchers a query uses; it is not a PromQL
parser (``promtool check rules`` parses the queries). Series names are what is left once
strings, label matchers, range selectors, grouping clauses, numbers and function calls are
taken out of the query.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, requires
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from olss_core.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_CPU_FILE = ROOT / "docker-compose.cpu.yml"
COMPOSE_SDXL_FILE = ROOT / "docker-compose.sdxl.yml"
DOCKER_DIR = ROOT / "docker"
PROMETHEUS_CONFIG = DOCKER_DIR / "prometheus" / "prometheus.yml"
ALERT_RULES = DOCKER_DIR / "prometheus" / "alerts.yml"
ALERT_TESTS = Path(__file__).resolve().parent / "alerts_test.yml"
GRAFANA_PROVISIONING = DOCKER_DIR / "grafana" / "provisioning"
DASHBOARD = DOCKER_DIR / "grafana" / "dashboards" / "olss-latency.json"
# docker-compose.yml requires a Grafana admin password: the one the tests pass.
TEST_GRAFANA_PASSWORD = "test-grafana-password"

# Grafana's global variables, replaced by a value of the same kind before promtool parses.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[A-Za-z_]\w*)\)$")

# PromQL words that are neither functions (always followed by "(") nor series names.
_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
    "group_right", "inf", "nan", "atan2",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_:])\d[\w.]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def promtool() -> str:
    """The ``promtool`` binary; ``make deploy-tools`` installs it (Debian's prometheus)."""
    path = shutil.which("promtool")
    assert path, "promtool is not on PATH: run `make deploy-tools` (apt-get install prometheus)"
    return path


def run_tool(
    *args: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; the result carries stdout and stderr for assertion messages."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )


def compose_config_run(
    *files: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` on ``files`` with only ``env`` (and PATH, HOME, LANG) set.

    Debian's ``docker-compose`` (1.29) validates against the Compose specification's JSON
    schema offline, without a Docker engine.
    """
    binary = shutil.which("docker-compose")
    assert binary, "docker-compose is not on PATH: run `make deploy-tools`"
    args = [binary]
    for file in files or (COMPOSE_FILE,):
        args += ["-f", str(file)]
    # Only the defaults written in the files: no OLSS_*, HF_TOKEN or COMPOSE_* from this shell.
    base = {key: os.environ[key] for key in ("PATH", "HOME", "LANG") if key in os.environ}
    return run_tool(*args, "config", env={**base, **(env or {})})


def compose_config(*files: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """The compose model after validation, interpolation and merging, with the one variable the
    files require (the Grafana admin password) set, plus ``env``."""
    result = compose_config_run(
        *files, env={"GRAFANA_ADMIN_PASSWORD": TEST_GRAFANA_PASSWORD, **(env or {})}
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The project's own ``Settings`` read from ``env``'s ``OLSS_*`` variables and no others
    (a variable whose value is None, set at run time from a Secret, is left out)."""
    with monkeypatch.context() as patch:
        for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
            patch.delenv(key)
        for key, value in env.items():
            if key.startswith(ENV_PREFIX) and value is not None:
                patch.setenv(key, value)
        return load_settings()


def unknown_settings(env: dict[str, str | None]) -> set[str]:
    """``OLSS_*`` variables that name no setting."""
    return {
        key for key in env
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX):].lower() not in Settings.model_fields
    }


_REDIS_UNITS = {"": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3,
                "gb": 1024**3}
_KUBERNETES_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2,
                     "gi": 1024**3}


def _size(text: str, units: dict[str, int]) -> int:
    match = re.fullmatch(r"(\d+)\s*([a-z]*)", str(text).strip().lower())
    assert match and match.group(2) in units, f"not a size: {text!r}"
    return int(match.group(1)) * units[match.group(2)]


def redis_bytes(text: str) -> int:
    """Bytes of a Redis memory size (``2gb`` = 2 GiB, ``2g`` = 2e9, as redis.conf reads them)."""
    return _size(text, _REDIS_UNITS)


def kubernetes_bytes(text: str) -> int:
    """Bytes of a Kubernetes memory quantity (``4Gi``, ``512Mi``, ``1G``)."""
    return _size(text, _KUBERNETES_UNITS)


def seconds(duration: str | int) -> float:
    """Seconds of a compose duration (``60s``, ``1m30s``) or a plain number."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def scrape_job(name: str) -> dict[str, Any]:
    """One ``scrape_configs`` entry of docker/prometheus/prometheus.yml by job name."""
    (job,) = [j for j in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"] if j["job_name"] == name]
    return job


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every ``expr`` of every panel target, rows' nested panels included."""
    queries = []
    for panel in all_panels(dashboard):
        queries += [target["expr"] for target in panel.get("targets", []) if "expr" in target]
    return queries


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels += panel.get("panels", [])
    return panels


def alert_rules() -> list[dict[str, Any]]:
    """The alerting rules (not recording rules) of ``alerts.yml``."""
    groups = load_yaml(ALERT_RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


@dataclass(frozen=True)
class TemplateVariable:
    """A dashboard variable filled from Prometheus: ``label_values(selector, label)``."""

    name: str
    selector: str
    label: str
    all_value: str


def template_variables(dashboard: dict[str, Any]) -> list[TemplateVariable]:
    variables = []
    for variable in dashboard["templating"]["list"]:
        match = _LABEL_VALUES.match(variable["definition"])
        assert match, f"${variable['name']}: not label_values(...): {variable['definition']}"
        variables.append(TemplateVariable(variable["name"], match["selector"], match["label"],
                                          variable["allValue"]))
    return variables


def with_grafana_variables_filled(expr: str, values: dict[str, str] | None = None) -> str:
    """``expr`` with Grafana's global variables and the dashboard's (``values`` by name,
    "All" for the others) replaced as Grafana replaces them."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    for variable in template_variables(load_dashboard()):
        expr = expr.replace(f"${variable.name}",
                            (values or {}).get(variable.name, variable.all_value))
    return expr


def series_names(expr: str) -> set[str]:
    """Series names a PromQL query selects, e.g. ``{"olss_job_e2e_seconds_bucket"}``."""
    text = _STRING.sub('""', with_grafana_variables_filled(expr))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or match.group().lower() in _KEYWORDS:
            continue
        names.add(match.group())
    return names


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector: ``series{label op "value"}``."""

    series: str
    label: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None
        return found if self.op == "=~" else not found


def label_matchers(expr: str) -> list[Matcher]:
    """The label matchers of every ``series{...}`` selector in a query."""
    matchers = []
    for selector in _SELECTOR.finditer(expr):
        for label, op, value in _MATCHER.findall(selector.group(2)):
            matchers.append(Matcher(selector.group(1), label, op, value.replace("\\\\", "\\")))
    return matchers


def grouping_labels(expr: str) -> set[str]:
    """Labels named in ``by (...)`` / ``without (...)`` clauses."""
    labels = set()
    for match in _GROUPING.finditer(_STRING.sub('""', expr)):
        if match.group(1) in {"by", "without"}:
            labels |= {label.strip() for label in match.group(2).split(",") if label.strip()}
    return labels


@dataclass(frozen=True)
class Mount:
    """One ``volumes:`` entry of a service: a named volume or a bind mount of a host path."""

    source: str
    target: str
    read_only: bool

    @property
    def is_bind(self) -> bool:
        return self.source.startswith(("/", "."))


def mounts(service: dict[str, Any]) -> list[Mount]:
    """The service's volumes, from either the short (``src:dst:mode``) or the long syntax."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            found.append(Mount(entry["source"], entry["target"], bool(entry.get("read_only"))))
            continue
        source, target, *mode = entry.split(":")
        found.append(Mount(source, target, "ro" in (mode[0].split(",") if mode else [])))
    return found


def host_path(service: dict[str, Any], container_path: str) -> Path | None:
    """The host path a bind mount of the service maps ``container_path`` to, if any."""
    for mount in mounts(service):
        inside = Path(container_path)
        if mount.is_bind and inside.is_relative_to(mount.target):
            return (ROOT / mount.source / inside.relative_to(mount.target)).resolve()
    return None


@dataclass(frozen=True)
class PublishedPort:
    """One ``ports:`` entry: a container port published on a host address and port."""

    host_ip: str
    host_port: int
    container_port: int

    @property
    def all_interfaces(self) -> bool:
        return self.host_ip in ("", "0.0.0.0", "::")


def published(service: dict[str, Any]) -> list[PublishedPort]:
    """The service's published ports, from either port syntax (``[ip:]host:container[/proto]``)."""
    found = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            found.append(
                PublishedPort(
                    str(entry.get("host_ip", "")), int(entry["published"]), int(entry["target"])
                )
            )
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        host_ip = parts[0] if len(parts) == 3 else ""
        host_port = parts[-2] if len(parts) > 1 else parts[-1]
        found.append(PublishedPort(host_ip, int(host_port), int(parts[-1])))
    return found


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """``{container port: host port}`` from either port syntax."""
    return {port.container_port: port.host_port for port in published(service)}


def requirement_closure(requirements: list[Requirement]) -> set[str]:
    """Distributions the requirements pull in (extras and markers applied), as installed here."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = list(requirements)
    while todo:
        requirement = todo.pop()
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(requirement.name)
        except PackageNotFoundError:
            continue
        extras = requirement.extras or {""}
        for spec in dist.requires or []:
            sub = Requirement(spec)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(sub)
    return {name for name, _ in seen}


def gateway_requirements() -> list[Requirement]:
    """What ``pip install '.[gateway]'`` asks for: the base dependencies and the extra's."""
    found = []
    for spec in requires("olss-serve") or []:
        requirement = Requirement(spec)
        marker = requirement.marker
        if marker is None or marker.evaluate({"extra": "gateway"}):
            requirement.marker = None
            found.append(requirement)
    return found


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def instructions(dockerfile: Path) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current.strip())
        current = ""
    found = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        found.append(Instruction(keyword.upper(), args.strip()))
    return found


@dataclass(frozen=True)
class Copy:
    """One COPY instruction: build-context sources and the destination (``dir/`` for a folder)."""

    sources: list[str]
    destination: str


def copies(dockerfile: Path) -> list[Copy]:
    """The Dockerfile's COPY instructions, in order."""
    found = []
    for step in instructions(dockerfile):
        if step.keyword == "COPY":
            *sources, destination = [a for a in step.args.split() if not a.startswith("--")]
            found.append(Copy(sources, destination))
    return found


@dataclass(frozen=True)
class ImageUser:
    """The user an image's processes run as: its last ``USER``, made by ``useradd --uid``."""

    name: str
    uid: int


def image_user(dockerfile: Path) -> ImageUser:
    steps = instructions(dockerfile)
    users = [step.args for step in steps if step.keyword == "USER"]
    assert users, f"{dockerfile.name} runs as root: no USER"
    name = users[-1]
    commands = " ".join(step.args for step in steps if step.keyword == "RUN")
    match = re.search(rf"useradd [^&]*--uid (\d+)[^&]* {re.escape(name)}\b", commands)
    assert match, f"{dockerfile.name}: no `useradd --uid N ... {name}`"
    return ImageUser(name, int(match.group(1)))


def base_image(dockerfile: Path) -> str:
    """The first FROM's image with ``${ARG}`` replaced by the ARG's default."""
    steps = instructions(dockerfile)
    defaults = {}
    for step in steps:
        if step.keyword == "FROM":
            image = step.args.split()[0]
            return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults[m.group(1)], image)
        if step.keyword == "ARG" and "=" in step.args:
            name, value = step.args.split("=", 1)
            defaults[name] = value
    raise AssertionError(f"{dockerfile} has no FROM")
