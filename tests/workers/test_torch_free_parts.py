"""The worker's parts run without torch or diffusers (only start-up and the engine need them),
so they can be tested and reasoned about with a fake engine."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO_ROOT

PARTS = [
    "workers.batch_progress", "workers.batch_runner", "workers.batching", "workers.engine",
    "workers.fault_injection", "workers.heartbeat", "workers.leases", "workers.lifecycle",
    "workers.metrics_server", "workers.receiver",
    "workers.result_writer", "workers.results", "workers.serve_loop", "workers.warm_up",
]


def test_importing_the_parts_loads_no_torch_and_no_diffusers() -> None:
    check = (
        f"import sys; import {', '.join(PARTS)}; "
        "print(sorted({'torch', 'diffusers'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
