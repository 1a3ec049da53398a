"""docker/*.Dockerfile and .dockerignore, read without a Docker engine.

The gateway image is python-slim with only the gateway's code and the locked versions of the
project's ``gateway`` extra; the worker image is a CUDA PyTorch runtime with no weights. Both run
as a non-root user. (Their locks: tests/deploy/test_lock.py.) That the gateway really runs
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
    base_image,
    gateway_requirements,
    image_user,
    instructions,
    load_yaml,
)

GATEWAY_DOCKERFILE = DOCKER_DIR / "gateway.Dockerfile"
WORKER_DOCKERFILE = DOCKER_DIR / "worker.Dockerfile"
HEAVY_PACKAGES = {"torch", "diffusers", "transformers", "safetensors", "accelerate"}
GATEWAY_CODE = {"olss_core", "olss_cli", "app"}
# The folders the worker writes (its ENV), all volumes.
WORKER_FOLDERS = ("HF_HOME", "OLSS_CACHE_DIR", "OLSS_SCHEDULE_DIR")


def runs(dockerfile: Path) -> list[str]:
    return [step.args for step in instructions(dockerfile) if step.keyword == "RUN"]


def test_gateway_image_is_python_slim_with_no_torch() -> None:
    assert fnmatch.fnmatch(base_image(GATEWAY_DOCKERFILE), "python:3.1*-slim*")
    commands = " ".join(runs(GATEWAY_DOCKERFILE))
    assert "pip install --no-deps -r requirements/gateway.lock" in commands, "not the gateway lock"
    assert re.search(r"pip install --no-deps \.( |$)", commands), "the project with its own deps"
    for package in HEAVY_PACKAGES:
        assert package not in commands, f"the gateway image installs {package}"


def test_gateway_image_copies_only_the_gateway_code() -> None:
    copied = {
        Path(source).name
        for step in instructions(GATEWAY_DOCKERFILE) if step.keyword == "COPY"
        for source in step.args.split()[:-1] if not source.startswith("--")
    }
    assert copied - {"pyproject.toml", "README.md", "gateway.lock"} == GATEWAY_CODE


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


def env_defaults(dockerfile: Path) -> dict[str, str]:
    """``ENV NAME=value`` pairs of the Dockerfile."""
    pairs = " ".join(s.args for s in instructions(dockerfile) if s.keyword == "ENV")
    return dict(re.findall(r"(\w+)=(\S+)", pairs))


@pytest.mark.parametrize(
    "dockerfile", [GATEWAY_DOCKERFILE, WORKER_DOCKERFILE], ids=["gateway", "worker"]
)
def test_images_run_as_a_non_root_user(dockerfile: Path) -> None:
    user = image_user(dockerfile)
    assert user.name not in ("root", "0") and user.uid != 0


def test_the_worker_user_owns_the_folders_it_writes_before_they_become_volumes() -> None:
    steps = instructions(WORKER_DOCKERFILE)
    user = image_user(WORKER_DOCKERFILE)
    folders = {name: env_defaults(WORKER_DOCKERFILE)[name] for name in WORKER_FOLDERS}
    (volume,) = [i for i, s in enumerate(steps) if s.keyword == "VOLUME"]
    chowns = [
        i for i, s in enumerate(steps)
        if s.keyword == "RUN" and f"chown {user.name}" in s.args
        and all(f"${{{name}}}" in s.args for name in folders)
    ]
    assert chowns and chowns[0] < volume, "the folders are not the user's before VOLUME"
    assert set(folders.values()) <= set(re.findall(r'"([^"]+)"', steps[volume].args))


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
