"""``python -m bench.offgrid_guidance --quick``: the off-grid guidance bench runs end to end and
reports a blend close to a schedule fitted at exactly that scale."""

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
    assert "blend / same path" in printed and "target <= 1.3x" in printed
    (cell,) = json.loads(out.read_text())["results"]
    assert cell["label"] == "blend of cfg3 and cfg7.5 at 5"
    assert cell["blend"] <= TARGET * cell["same_path"]
    assert cell["blend"] < cell["nearest"] and cell["blend"] < cell["best_peer"]
