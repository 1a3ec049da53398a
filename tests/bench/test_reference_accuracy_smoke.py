"""bench/reference_accuracy.py cannot rot: on a small mixture its adaptive ODE solution agrees
with the 1000-step reference far better than the second-order check, and the table prints."""

from __future__ import annotations

from bench.olss_quality import MIXTURES, BenchConfig, Testbed, mean_relative_error
from bench.reference_accuracy import dpm_solver, main, solve_probability_flow

MIXTURE = "broad-d32"


def test_the_ode_solution_is_the_reference_target_more_closely_than_the_check() -> None:
    bed = Testbed(MIXTURES[MIXTURE], 3.0, BenchConfig(mixtures=(MIXTURE,), num_calibration=8,
                                                      num_heldout=2))
    ode = solve_probability_flow(bed, rtol=1e-7, atol=1e-10)
    to_reference = mean_relative_error(ode.samples, bed.reference)
    to_check = mean_relative_error(ode.samples, dpm_solver(bed, 2, 1000))
    first_order = mean_relative_error(ode.samples, dpm_solver(bed, 1, 1000))
    assert ode.evaluations > 100
    assert to_reference < to_check < first_order
    assert to_reference < 1e-4


def test_the_table_names_every_run(capsys) -> None:
    assert main(["--mixture", MIXTURE, "--guidance", "1.5", "--examples", "2", "--rtol",
                 "1e-6"]) == 0
    out = capsys.readouterr().out
    assert "| reference: DPM-Solver++(3M), 1000 steps | 0.00e+00 |" not in out
    for run in ("reference: DPM", "reference check: DPM", "teacher: "):
        assert f"| {run}" in out
