"""``python -m bench.image_encoding``: runs on a small image and reports every format, with
PNG level 6 as the 1.00 baseline and level 0 the largest file."""

from __future__ import annotations

from bench.image_encoding import main


def test_a_small_run_reports_every_format_against_png_6(capsys) -> None:
    assert main(["--sizes", "64", "--levels", "0", "6", "--repeats", "1"]) == 0
    rows = {cells[1]: cells for line in capsys.readouterr().out.splitlines()
            if (cells := [c.strip() for c in line.strip("|").split("|")])[0] == "64x64"}
    assert set(rows) == {"png 0", "png 6", "jpeg", "webp"}
    assert rows["png 6"][4:] == ["1.00", "1.00"]
    assert float(rows["png 0"][5]) > 1.0  # level 0 stores the pixels as they are
