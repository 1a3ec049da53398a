"""docker/*.Dockerfile and .dockerignore, read without a Docker engine.

The gateway image is python-slim with only the gateway's code and the project's ``gateway``
extra; the worker image is a CUDA PyTorch runtime with no weights. That the gateway really runs
on that extra alone is checked by installing it into a fresh venv
(tests/deploy/test_gateway_install.py) and by starting it restricted to those packages
(tests/deploy/test_metric_names.py).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    COMPOSE_CPU_FILE,
    COMPOSE_FILE,
    DOCKER_DIR,
    ROOT,
    gateway_requirements,
    instructions,
    load_yaml,
)

GATEWAY_DOCKERFILE = DOCKER_DIR / "gateway.Dockerfile"
WORKER_DOCKERFILE = DOCKER_DIR / "worker.Dockerfile"
HEAVY_PACKAGES = {"torch", "diffusers", "transformers", "safetensors", "accelerate"}
GATEWAY_CODE = {"olss_core", "olss_cli", "app"}


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


def runs(dockerfile: Path) -> list[str]:
    return [step.args for step in instructions(dockerfile) if step.keyword == "RUN"]


def test_gateway_image_is_python_slim_with_no_torch() -> None:
    assert fnmatch.fnmatch(base_image(GATEWAY_DOCKERFILE), "python:3.1*-slim*")
    commands = " ".join(runs(GATEWAY_DOCKERFILE))
    assert re.search(r"pip install (-\S+ )*\"?\.\[gateway\]\"?", commands), "not the gateway extra"
    for package in HEAVY_PACKAGES:
        assert package not in commands, f"the gateway image installs {package}"


def test_gateway_image_copies_only_the_gateway_code() -> None:
    copied = {
        Path(source).name
        for step in instructions(GATEWAY_DOCKERFILE) if step.keyword == "COPY"
        for source in step.args.split()[:-1] if not source.startswith("--")
    }
    assert copied - {"pyproject.toml", "README.md"} == GATEWAY_CODE


def test_gateway_extra_has_no_torch() -> None:
    requirements = gateway_requirements()
    names = {requirement.name.lower() for requirement in requirements}
    assert {"fastapi", "uvicorn", "redis", "pydantic-settings"} <= names
    assert not names & HEAVY_PACKAGES, names & HEAVY_PACKAGES


def test_worker_image_is_a_cuda_pytorch_runtime_by_default() -> None:
    assert fnmatch.fnmatch(base_image(WORKER_DOCKERFILE), "pytorch/pytorch:*-cuda12*-runtime")
    worker_build = load_yaml(COMPOSE_FILE)["services"]["worker"]["build"]
    assert "BASE_IMAGE" not in (worker_build.get("args") or {})
    cpu_build = load_yaml(COMPOSE_CPU_FILE)["services"]["worker-cpu"]["build"]
    assert cpu_build["dockerfile"] == worker_build["dockerfile"]
    assert fnmatch.fnmatch(cpu_build["args"]["BASE_IMAGE"], "python:3.1*-slim*")


def test_worker_image_bakes_in_no_model_weights() -> None:
    commands = " ".join(runs(WORKER_DOCKERFILE))
    for download in ("from_pretrained", "snapshot_download", "huggingface-cli", "hf download"):
        assert download not in commands
    env = " ".join(s.args for s in instructions(WORKER_DOCKERFILE) if s.keyword == "ENV")
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    volumes = " ".join(s.args for s in instructions(WORKER_DOCKERFILE) if s.keyword == "VOLUME")
    assert hf_home in volumes


def dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative, with /) out of the build context.

    Docker's rules: patterns apply in order, the last match wins, ``!`` re-includes, and a
    pattern that matches a parent directory matches everything under it.
    """
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        regex = fnmatch.translate(pattern)
        if pattern.startswith("**/"):
            regex = "(.*/)?" + fnmatch.translate(pattern[3:])
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "dockerfile", [GATEWAY_DOCKERFILE, WORKER_DOCKERFILE], ids=["gateway", "worker"]
)
def test_every_copied_path_is_in_the_build_context(dockerfile: Path) -> None:
    copies = [step.args.split() for step in instructions(dockerfile) if step.keyword == "COPY"]
    assert copies
    for args in copies:
        sources = [a for a in args[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
            assert not dockerignore_excludes(source), f"{source} is excluded by .dockerignore"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "app/__pycache__/x.pyc"):
        assert dockerignore_excludes(path), path
    assert not dockerignore_excludes("app/settings.py")
