"""The gateway image's recipe works without a Docker engine: what docker/gateway.Dockerfile
copies, installed as its RUN lines install it (the gateway lock, then the project without
dependencies, then ``pip check``) into a fresh venv, serves without torch.

This installs from the package index (as the image build does), so it needs the network that
``make test`` already needs to install the project.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.deploy_files import DOCKER_DIR, ROOT, copies, instructions

pytestmark = pytest.mark.e2e
GATEWAY_DOCKERFILE = DOCKER_DIR / "gateway.Dockerfile"
IMPORT_CHECK = """
import importlib.util, sys
import app.main, olss_cli.main, olss_core.protocol
for name in ("torch", "diffusers", "transformers", "workers", "schedules", "devtools"):
    assert importlib.util.find_spec(name) is None, f"{name} is installed in the gateway image"
app.main.create_app()
print("gateway ok")
"""


def copy_into(context: Path) -> None:
    """Lay out the build context as the Dockerfile's COPY instructions do under its WORKDIR."""
    for step in copies(GATEWAY_DOCKERFILE):
        for source in step.sources:
            path = ROOT / source
            target = context / step.destination
            if step.destination.endswith("/"):
                target = target / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                shutil.copytree(path, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(path, target)


def pip_commands() -> list[list[str]]:
    """The arguments of every ``pip ...`` command the Dockerfile's RUN lines run, in order."""
    commands = []
    for step in instructions(GATEWAY_DOCKERFILE):
        if step.keyword == "RUN":
            for command in step.args.split("&&"):
                args = shlex.split(command)
                if args[0] == "pip":
                    commands.append(args[1:])
    return commands


@pytest.fixture(scope="module")
def gateway_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the Dockerfile's sources installed as its RUN lines install them."""
    work = tmp_path_factory.mktemp("gateway-image")
    context = work / "opt-olss"
    copy_into(context)
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    commands = pip_commands()
    assert [args[0] for args in commands] == ["install", "install", "check"], commands
    for args in commands:
        done = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", *args[:1], "-q", *args[1:]],
            cwd=context, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}{done.stderr[-4000:]}"
    return venv


def test_the_gateway_extra_alone_serves_without_torch(gateway_venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(gateway_venv / "bin" / "python"), "-c", IMPORT_CHECK],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "gateway ok" in done.stdout


def test_the_olss_command_runs_in_the_gateway_image(gateway_venv: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(gateway_venv / "bin" / "olss"), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gateway" in done.stdout
