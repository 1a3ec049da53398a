"""requirements/*.lock: every install is reproducible and is what CI tests.

``make lock`` (pip-compile) writes the dev lock, everything the dev extra needs, and the gateway
and worker locks as its subsets. ``make install``, the gateway image and the worker image each
install their lock; the worker image's base bundles the locked torch. pyproject.toml keeps each
dependency below its next major release.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.deploy.deploy_files import (
    DOCKER_DIR,
    ROOT,
    base_image,
    instructions,
    requirement_closure,
    run_tool,
)

LOCKS = ROOT / "requirements"
DEV_LOCK = LOCKS / "dev.lock"
GATEWAY_LOCK = LOCKS / "gateway.lock"
WORKER_LOCK = LOCKS / "worker.lock"
PINS = LOCKS / "pins.txt"
PROJECT = "olss-serve"
# The project (installed from its own folder) and the installer are never pinned.
NOT_LOCKED = {PROJECT, "pip"}
HEAVY_PACKAGES = {"torch", "diffusers", "transformers", "safetensors", "accelerate", "triton"}
UPPER_BOUND_OPERATORS = {"<", "<=", "==", "~=", "==="}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def read_lock(path: Path) -> dict[str, Version]:
    """``{canonical name: pinned version}`` of a lock file (comments and annotations skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        if match := _PIN.match(line.strip()):
            pins[canonicalize_name(match.group(1))] = Version(match.group(2))
    assert pins, f"{path} pins nothing"
    return pins


def declared(*extras: str) -> list[Requirement]:
    """pyproject.toml's base dependencies and those of ``extras``, self-references left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [r for r in map(Requirement, specs) if canonicalize_name(r.name) != PROJECT]


def all_extras() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                ["optional-dependencies"])


def needed(*extras: str) -> set[str]:
    """Distributions the base dependencies and ``extras`` pull in, as installed here."""
    return requirement_closure(declared(*extras)) - NOT_LOCKED


def runs(dockerfile: Path) -> str:
    return " ".join(s.args for s in instructions(dockerfile) if s.keyword == "RUN")


def test_every_declared_dependency_stops_before_a_new_major() -> None:
    for requirement in declared(*all_extras()):
        operators = {spec.operator for spec in requirement.specifier}
        assert operators & UPPER_BOUND_OPERATORS, f"{requirement} has no upper bound"


def test_every_declared_dependency_is_locked_within_its_bounds() -> None:
    """A dependency added or re-bounded in pyproject.toml without `make lock` fails here."""
    lock = read_lock(DEV_LOCK)
    for requirement in declared(*all_extras()):
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in {DEV_LOCK.name}: run make lock"
        assert requirement.specifier.contains(lock[name], prereleases=True), (
            f"{DEV_LOCK.name} pins {name}=={lock[name]}, outside {requirement}: run make lock"
        )


def test_the_dev_lock_pins_exactly_what_the_dev_extra_needs() -> None:
    lock = set(read_lock(DEV_LOCK))
    wanted = needed(*all_extras())
    assert wanted - lock == set(), "needed but not pinned: run make lock"
    assert lock - wanted == set(), "pinned but not needed: run make lock"


def test_the_environment_is_the_locked_one() -> None:
    """make install installed the dev lock: each pinned distribution at its pinned version (a
    build label such as +cpu aside)."""
    for name, version in read_lock(DEV_LOCK).items():
        installed = Version(distribution(name).version)
        assert installed.public == version.public, f"{name} {installed} installed, {version} locked"


@pytest.mark.parametrize(("lock", "extra"), [(GATEWAY_LOCK, "gateway"), (WORKER_LOCK, "worker")])
def test_role_locks_are_what_their_extra_needs_at_the_dev_locks_versions(
    lock: Path, extra: str
) -> None:
    pins, dev = read_lock(lock), read_lock(DEV_LOCK)
    assert set(pins) == needed(extra), f"{lock.name} is not what the {extra} extra needs"
    assert {n: v for n, v in pins.items() if dev[n] != v} == {}, f"{lock.name} differs from dev"


def test_the_gateway_lock_holds_no_torch() -> None:
    assert set(read_lock(GATEWAY_LOCK)) & HEAVY_PACKAGES == set()


def test_torch_is_pinned_to_the_version_pins_txt_names_without_a_build_label() -> None:
    """torch==X, not X+cpu: the CPU build CI installs and the image's CUDA build both match."""
    (wanted,) = [Requirement(line) for line in PINS.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
    for lock in (DEV_LOCK, WORKER_LOCK):
        torch = read_lock(lock)["torch"]
        assert torch.local is None and wanted.specifier.contains(torch), f"{lock.name}: {torch}"


def test_the_worker_image_base_bundles_the_locked_torch() -> None:
    match = re.fullmatch(
        r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda[\d.]+-cudnn\d+-runtime",
        base_image(DOCKER_DIR / "worker.Dockerfile"),
    )
    assert match, "the worker image's default base is not a pytorch/pytorch runtime tag"
    assert Version(match.group(1)) == read_lock(WORKER_LOCK)["torch"]


@pytest.mark.parametrize(("image", "lock"), [("gateway", GATEWAY_LOCK), ("worker", WORKER_LOCK)])
def test_each_image_installs_its_lock(image: str, lock: Path) -> None:
    dockerfile = DOCKER_DIR / f"{image}.Dockerfile"
    copied = [s.args for s in instructions(dockerfile) if s.keyword == "COPY"]
    relative = str(lock.relative_to(ROOT))
    assert any(args.split()[0] == relative for args in copied), f"{image} copies no {relative}"
    assert re.search(rf"pip install (--no-deps )?-r {re.escape(relative)}", runs(dockerfile))


def test_make_install_installs_the_dev_lock_and_nothing_unpinned() -> None:
    """The recipe `make install` runs (make -n: printed, not run)."""
    result = run_tool("make", "-n", "-B", "install", "VENV=/nonexistent-venv")
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if " pip install " in line]
    assert any(f"--no-deps -r {DEV_LOCK.relative_to(ROOT)}" in line for line in installs)
    for line in installs:
        assert "--no-deps" in line or line.endswith("--upgrade pip"), f"unpinned: {line}"
    assert any(line.endswith(" pip check") for line in result.stdout.splitlines())
