"""bench/olss_quality.py cannot rot: its --quick run fits OLSS, runs every peer, writes JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OLSS = {"closed-loop", "closed-loop (old)", "paper", "uniform"}
PEERS = {"DDIM", "PNDM", "Euler", "Euler Karras", "LMS", "LMS Karras", "DEIS", "DPM++2M"}
PEERS |= {"DPM++2M Karras", "DPM++3M", "DPM++3M Karras", "UniPC", "UniPC Karras", "AYS DPM++2M"}
PEERS |= {"DEIS-3", "DEIS Karras", "DPM-Solver-2M", "UniPC-3", "UniPC bh1", "SA-Solver"}


def test_quick_quality_bench_scores_every_sampler_and_olss_wins(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    command = [
        sys.executable,
        "-m",
        "bench.olss_quality",
        "--quick",
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "OLSS closed-loop" in done.stdout
    result = json.loads(out.read_text())
    (case,) = result["cases"]
    steps = [str(k) for k in result["config"]["steps"]]
    assert set(case["errors"]) == OLSS | PEERS
    for errors in case["errors"].values():
        assert sorted(errors) == sorted(steps)
    assert case["reference_check"] < 1e-2 and case["teacher_error"] < 1e-2
    for k in steps:
        best_peer = min(case["errors"][name][k] for name in PEERS)
        assert case["errors"]["closed-loop"][k] < best_peer
    assert {"analytic-summary", "analytic-robustness", "analytic-old-vs-new"} <= set(
        result["tables"]
    )
    for k in steps:  # the robustness numbers are per example: mean <= max of p95 and worst class
        assert case["p95"]["closed-loop"][k] > 0 and case["worst_condition"]["closed-loop"][k] > 0
        assert case["evaluations"][k] > 0
