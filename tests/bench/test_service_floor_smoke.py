"""``python -m bench.service_floor``: its processes serve a short closed-loop load, each batch
holds one job per client (the oracle window), and every row reports an overhead above zero."""

from __future__ import annotations

from bench.service_floor import main


def test_a_short_run_batches_one_job_per_client_and_reports_the_overhead(capsys) -> None:
    assert main(["--clients", "1", "2", "--requests", "6", "--inference-ms", "5"]) == 0
    rows = {int(cells[1]): cells for line in capsys.readouterr().out.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")])[0] == "floor"}
    assert set(rows) == {1, 2}
    for clients, cells in rows.items():
        assert int(cells[3]) >= 6  # requests answered
        # Mean batch: the window waits for every client's request (a slow machine may let
        # one go alone after the 20 ms gap, so not exactly 2 for two clients).
        assert float(cells[10]) == 1.0 if clients == 1 else float(cells[10]) >= 1.5
        overhead_p50 = float(cells[6].split("/")[0])
        assert 0 < overhead_p50 < 1000
