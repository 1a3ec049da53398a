"""The gateway stays free of torch, diffusers and transformers (it must start in a second)."""

from __future__ import annotations

import subprocess
import sys

from tests.support.processes import REPO_ROOT

HEAVY = ("torch", "diffusers", "transformers")


def test_importing_the_gateway_loads_no_torch_or_diffusers() -> None:
    code = (
        "import sys, app, app.main, olss_cli.main, olss_core.protocol, olss_core.metrics\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "", f"the gateway imported: {result.stdout.strip()}"
