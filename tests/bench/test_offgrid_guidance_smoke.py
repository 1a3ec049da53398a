"""``python -m bench.offgrid_guidance --quick``: the off-grid guidance bench runs end to end and
reports the served schedule (fitted in g) close to one fitted at exactly that scale."""

from __future__ import annotations

import json
from pathlib import Path

from bench.offgrid_guidance import TARGET, main
from tests.support.torch_threads import single_torch_thread


def test_the_quick_run_writes_its_table_and_numbers(tmp_path: Path, capsys) -> None:
    out = tmp_path / "offgrid.json"
    with single_torch_thread():  # the bench sets one thread; restore it for other tests
        assert main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "served / same path: worst" in printed and "within 1.3x in 1 of 1 cells" in printed
    assert "linear blend / same path" in printed and "nearest / same path" in printed
    (cell,) = json.loads(out.read_text())["results"]
    assert cell["label"] == "fit in g of cfg3 to cfg7.5 at 5"
    assert cell["served"] <= TARGET * cell["same_path"]
    assert cell["served"] < cell["nearest"] and cell["served"] < cell["best_peer"]
    assert cell["linear_blend"] > 0
