"""The planner against published runs: the bound, a held-out fit, and the CLI contract."""

import dataclasses
import json

from typer.testing import CliRunner

from gigafactory.cli import app
from gigafactory.plan.calibrate import family, fit_families
from gigafactory.plan.runs import read_runs
from gigafactory.plan.validate import compare_run, out_of_scope, summarise, validate
from gigafactory.spec import load_hardware


def test_packaged_runs_within_bounds_with_catalog_calibration():
    report = validate()
    assert len(report.rows) == len(read_runs())
    assert report.median_abs_error_pct <= 10
    assert report.max_abs_error_pct <= 25
    in_scope = [r for r in report.rows if r.in_scope]
    assert len(in_scope) >= 25


def test_calibration_has_fewer_constants_than_rows():
    names = {r.gpu for r in read_runs()}
    blocks = {family(n): load_hardware(n).efficiency for n in names}
    fitted = sum(len([k for k in b if k != "nvlink"]) for b in blocks.values())
    assert fitted < len([r for r in read_runs() if not out_of_scope(r)]) / 2


def test_held_out_rows_are_predicted_from_a_fit_on_the_others():
    """Fit each family's efficiencies on every other row (sorted by id), predict the rest."""
    runs = sorted((r for r in read_runs() if not out_of_scope(r)), key=lambda r: r.id)
    train, test = runs[::2], runs[1::2]
    effs = fit_families(train)
    hw = {
        g: dataclasses.replace(load_hardware(g), efficiency=effs[family(g)])
        for g in {r.gpu for r in runs}
    }
    report = summarise([compare_run(r, hw[r.gpu]) for r in test])
    assert report.median_abs_error_pct <= 10
    assert report.max_abs_error_pct <= 25


def test_validate_json_contract():
    result = CliRunner().invoke(app, ["validate", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert set(out) == {"rows", "median_abs_error_pct", "max_abs_error_pct"}
    assert set(out["rows"][0]) == {"id", "metric", "published", "predicted", "error_pct"}


def test_plan_default_and_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["plan"]["model"] == "grok-1" and out["search"]["cluster_gpus"] == 100_000
    assert out["plan"]["gpus"] + out["search"]["spare_gpus"] == 100_000
    assert out["plan"]["layout"]["global_batch"] == out["search"]["requested_global_batch"]
    assert out["run"]["days"] > 0 and out["run"]["power_mw"] > 100
    png = tmp_path / "p.png"
    result = runner.invoke(
        app, ["plan", "--model", "llama3-70b", "--gpus", "1024", "--tp", "8", "--pp", "4",
              "--global-batch", "1024", "--recompute", "selective", "--plot", str(png)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "memory per GPU" in result.output and png.stat().st_size > 1000
