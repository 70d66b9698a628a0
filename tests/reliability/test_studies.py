"""Failure-rate presets from published studies, and every option of `gigafactory reliability`.

The Kokolis et al. (2024) figures are in src/gigafactory/data/kokolis2024_rsc.csv; the model
has to reproduce them with its own goodput expression (Daly's exact E[T]), not the paper's.
"""

import json
import math

import pytest

from gigafactory.cli import main
from gigafactory.errors import SpecError
from gigafactory.reliability import ReliabilityScenario, analyze, simulate
from gigafactory.reliability.studies import (
    STUDIES,
    load_study,
    published_figures,
    rsc_failure_model,
)


def figures(kind):
    return [f for f in published_figures() if f.figure == kind]


def test_the_packaged_figures_are_the_published_ones():
    rates = {f.cluster: f.value for f in figures("failure_rate")}
    assert rates == {"RSC-1": 6.50, "RSC-2": 2.34}
    measured = {f.gpus: f.hours for f in figures("job_mttf_measured")}
    assert measured == {8: 47.7 * 24, 1024: 7.9}
    assert {f.gpus: f.value for f in figures("ettr_expected") if f.gpus == 8000} == {8000: 0.90}


@pytest.mark.parametrize("fig", figures("job_mttf_projected"), ids=lambda f: str(f.gpus))
def test_rsc1_rate_reproduces_the_projected_job_mttf(fig):
    """1.8 h at 16,384 GPUs and 0.23 h at 131,072 GPUs: MTTF = (N_nodes · r_f)^-1."""
    model = rsc_failure_model(fig.cluster)
    assert model.job_mtbf_hours(fig.gpus) == pytest.approx(fig.value, rel=0.03)


@pytest.mark.parametrize("fig", figures("job_mttf_measured"), ids=lambda f: str(f.gpus))
def test_rsc_jobs_reproduces_the_measured_job_mttf(fig):
    assert load_study("rsc-jobs").job_mtbf_hours(fig.gpus) == pytest.approx(fig.hours, rel=1e-9)


def test_measured_failures_grow_faster_than_linearly_with_job_size():
    jobs = load_study("rsc-jobs")
    # 128× the GPUs, 145× the failures: λ ∝ N^α with α = ln(1144.8/7.9)/ln(128).
    assert jobs.size_exponent == pytest.approx(math.log(47.7 * 24 / 7.9) / math.log(128))
    assert 1.02 < jobs.size_exponent < 1.03
    small, big = jobs.job_rate_per_hour(8), jobs.job_rate_per_hour(1024)
    assert big / small > 128
    # Beyond the measurements it projects shorter MTTFs than the linear infrastructure model.
    assert jobs.job_mtbf_hours(16_384) < load_study("rsc1").job_mtbf_hours(16_384)


@pytest.mark.parametrize(
    "fig", figures("ettr_expected"), ids=lambda f: f"{f.gpus}-{f.checkpoint_interval_min:g}min"
)
def test_goodput_reproduces_the_published_ettr_by_checkpoint_interval(fig):
    scenario = ReliabilityScenario(
        gpus=fig.gpus,
        checkpoint_s=fig.checkpoint_write_min * 60,
        interval_s=fig.checkpoint_interval_min * 60,
        restart_s=fig.restart_min * 60,
        failures=rsc_failure_model(fig.cluster),
    )
    assert analyze(scenario).goodput == pytest.approx(fig.value, abs=0.03)
    assert simulate(scenario, trials=20, seed=1).goodput_mean == pytest.approx(fig.value, abs=0.03)


def test_failure_scale_works_for_every_study():
    for name in STUDIES:
        base = ReliabilityScenario(gpus=16_384, failures=load_study(name))
        worse = ReliabilityScenario(gpus=16_384, failures=load_study(name), failure_scale=1.7)
        assert worse.mtbf_s == pytest.approx(base.mtbf_s / 1.7)
        assert worse.manual_share == base.manual_share
        assert analyze(worse).goodput < analyze(base).goodput


def test_unknown_study_names_the_known_ones():
    with pytest.raises(SpecError, match="rsc1") as info:
        load_study("rsc3")
    assert info.value.field == "study"


def reliability_json(capsys, *argv):
    with pytest.raises(SystemExit) as done:
        main(["reliability", "--days", "2", "--trials", "5", "--json", *argv])
    assert done.value.code == 0
    return json.loads(capsys.readouterr().out)


def test_cli_every_option_has_its_effect(capsys, tmp_path):
    base = reliability_json(capsys)
    closed = base["closed_form"]
    assert base["study"] == "llama3" and closed["gpus"] == 100_000 and closed["work_days"] == 2

    def closed_form(*argv):
        return reliability_json(capsys, *argv)["closed_form"]

    scaled = closed_form("--failure-scale", "1.7")  # used to crash with AttributeError
    assert scaled["mtbf_hours"] == pytest.approx(closed["mtbf_hours"] / 1.7)
    assert scaled["goodput"] < closed["goodput"]
    rsc1 = closed_form("--study", "rsc1", "--gpus", "16384")
    assert rsc1["mtbf_hours"] == pytest.approx(1.8, rel=0.01)
    assert closed_form("--gpus", "16384")["goodput"] > closed["goodput"]
    assert closed_form("--days", "3")["work_days"] == 3
    assert closed_form("--interval-s", "600")["checkpoint_interval_s"] == 600
    slow_ckpt = closed_form("--checkpoint-s", "60")
    assert slow_ckpt["checkpoint_interval_s"] > closed["checkpoint_interval_s"]
    assert slow_ckpt["goodput"] < closed["goodput"]
    assert closed_form("--restart-s", "900")["goodput"] < closed["goodput"]
    repair = closed_form("--manual-repair-h", "24")
    assert repair["restart_s"] > closed["restart_s"] and repair["goodput"] < closed["goodput"]
    sim = reliability_json(capsys, "--trials", "7", "--seed", "3")["simulation"]
    assert sim["trials"] == 7
    assert reliability_json(capsys, "--trials", "7", "--seed", "3")["simulation"] == sim
    assert reliability_json(capsys, "--trials", "7", "--seed", "4")["simulation"] != sim
    plot = tmp_path / "g.png"
    reliability_json(capsys, "--plot", str(plot))
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_cli_table_names_the_study(capsys):
    with pytest.raises(SystemExit) as done:
        main(["reliability", "--study", "rsc2", "--days", "1", "--trials", "3"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "RSC-2" in out and "goodput (closed form)" in out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--gpus", "0"], "gpus"),
        (["--days", "0"], "work_days"),
        (["--days", "nan"], "work_days"),
        (["--checkpoint-s", "-1"], "checkpoint_s"),
        (["--checkpoint-s", "nan"], "checkpoint_s"),
        (["--checkpoint-s", "0"], "checkpoint_s"),  # no optimum without an interval
        (["--restart-s", "-5"], "restart_s"),
        (["--manual-repair-h", "-1"], "manual_repair_s"),
        (["--interval-s", "-1"], "interval_s"),
        (["--interval-s", "inf"], "interval_s"),
        (["--failure-scale", "0"], "failure_scale"),
        (["--failure-scale", "nan"], "failure_scale"),
        (["--study", "rsc3"], "study"),
        (["--trials", "0"], "trials"),
        (["--seed", "-1"], "seed"),
        (["--plot", "/no/such/dir/g.png"], "/no/such/dir"),
    ],
)
def test_cli_bad_values_are_one_line_and_exit_2(capsys, argv, named):
    with pytest.raises(SystemExit) as done:
        main(["reliability", "--days", "1", "--trials", "3", *argv])
    assert done.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1 and named in err


def test_non_blocking_checkpoints_need_an_interval():
    scenario = ReliabilityScenario(checkpoint_s=0, interval_s=300, gpus=16_000)
    assert analyze(scenario).checkpoint_interval_s == 300
