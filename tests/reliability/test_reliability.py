"""Failure model, checkpoint cadence and goodput: closed form, simulation and CLI."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigafactory.cli import main
from gigafactory.errors import SpecError
from gigafactory.reliability import (
    ReliabilityScenario,
    analyze,
    daly_optimal_interval_s,
    expected_goodput,
    llama3_failure_model,
    simulate,
)
from gigafactory.reliability.goodput import checkpoint_stall_s


def test_llama3_rates_reproduce_its_interruption_count():
    model = llama3_failure_model()
    # 419 unexpected interruptions in 54 days on 16,384 GPUs: M = 54·24/419 h.
    assert model.job_mtbf_hours(16_384) == pytest.approx(54 * 24 / 419)
    assert model.planned_per_day == pytest.approx(47 / 54)
    shares = {c.name: s for c, s in model.cause_shares()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["faulty GPU"] == pytest.approx(148 / 419)
    software = sum(s for c, s in model.cause_shares() if c.category == "software")
    assert software == pytest.approx((54 + 7 + 2) / 419)  # the rest is hardware or network
    # 100,000 GPUs: about six times as many GPUs, so an interruption every ~30 minutes.
    assert model.job_mtbf_hours(100_000) * 60 == pytest.approx(30.4, abs=0.2)


def test_daly_interval_reduces_to_young_when_failures_are_rare():
    delta, mtbf = 10.0, 1e7
    assert daly_optimal_interval_s(delta, mtbf) == pytest.approx(
        math.sqrt(2 * delta * mtbf), rel=0.01
    )


def test_exact_goodput_reduces_to_first_order_when_failures_are_rare():
    tau, delta, mtbf, restart = 600.0, 10.0, 1e6, 300.0
    first_order = tau / (tau + delta) * (1 - ((tau + delta) / 2 + restart) / mtbf)
    assert expected_goodput(tau, delta, mtbf, restart) == pytest.approx(first_order, rel=1e-3)


def test_optimal_interval_beats_its_neighbours():
    delta, mtbf, restart = 10.0, 1800.0, 300.0
    tau = daly_optimal_interval_s(delta, mtbf, restart)
    best = expected_goodput(tau, delta, mtbf, restart)
    for other in (tau * 0.7, tau * 1.4):
        assert expected_goodput(other, delta, mtbf, restart) < best


def test_llama3_scenario_keeps_goodput_above_ninety_percent():
    """Llama 3 reports >90% effective training time on 16,384 GPUs (the defaults' check)."""
    scenario = ReliabilityScenario(gpus=16_384, work_days=54)
    assert analyze(scenario).goodput > 0.90
    assert simulate(scenario, trials=50, seed=1).goodput_mean > 0.90


@pytest.mark.parametrize("gpus", [16_384, 100_000])
def test_simulation_agrees_with_closed_form(gpus):
    scenario = ReliabilityScenario(gpus=gpus, work_days=20)
    closed = analyze(scenario)
    sim = simulate(scenario, trials=100, seed=3)
    assert sim.goodput_mean == pytest.approx(closed.goodput, abs=0.02)
    # The simulated stops arrive at the modelled rate.
    per_day = sim.interruptions_mean / sim.wall_days_mean
    assert per_day == pytest.approx(closed.interruptions_per_day, rel=0.05)
    # Every simulated second is accounted for.
    assert sum(sim.days.values()) == pytest.approx(sim.wall_days_mean, rel=1e-9)
    assert sim.days["useful"] == pytest.approx(20, rel=1e-9)


def test_simulation_is_deterministic_for_a_seed():
    scenario = ReliabilityScenario(gpus=50_000, work_days=5)
    assert simulate(scenario, trials=20, seed=7) == simulate(scenario, trials=20, seed=7)


@settings(max_examples=30, deadline=None)
@given(
    small=st.integers(min_value=100, max_value=150_000),
    extra=st.integers(min_value=1, max_value=100_000),
    restart=st.floats(min_value=10, max_value=3600),
)
def test_goodput_never_rises_with_more_gpus_or_slower_restarts(small, extra, restart):
    base = ReliabilityScenario(gpus=small, restart_s=restart)
    bigger = ReliabilityScenario(gpus=small + extra, restart_s=restart)
    slower = ReliabilityScenario(gpus=small, restart_s=restart * 2)
    assert analyze(bigger).goodput <= analyze(base).goodput + 1e-12
    assert analyze(slower).goodput <= analyze(base).goodput + 1e-12


def test_async_checkpoint_stalls_less_than_synchronous():
    params = 314e9
    sync = checkpoint_stall_s(
        params, 100_000, storage_gbs=1000, asynchronous=False, host_copy_gbs=25
    )
    asyn = checkpoint_stall_s(
        params, 100_000, storage_gbs=1000, asynchronous=True, host_copy_gbs=25
    )
    assert sync == pytest.approx(314e9 * 14 / 1e12)  # 4.4 TB at 1 TB/s
    assert asyn < sync


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"gpus": 0}, "gpus"),
        ({"checkpoint_s": 0}, "checkpoint_s"),
        ({"failure_scale": -1}, "failure_scale"),
    ],
)
def test_bad_scenarios_name_the_field(changes, field):
    with pytest.raises(SpecError) as info:
        ReliabilityScenario(**changes)
    assert info.value.field == field


def test_cli_json_and_plot(tmp_path, capsys):
    plot = tmp_path / "goodput.png"
    with pytest.raises(SystemExit) as done:
        main(
            [
                "reliability",
                "--gpus",
                "100000",
                "--days",
                "10",
                "--trials",
                "20",
                "--json",
                "--plot",
                str(plot),
            ]
        )
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert 0.5 < data["simulation"]["goodput_mean"] < 0.9
    assert data["closed_form"]["mtbf_hours"] == pytest.approx(0.507, abs=0.01)
    assert plot.stat().st_size > 10_000


def test_cli_bad_input_is_one_line_and_nonzero(capsys):
    with pytest.raises(SystemExit) as done:
        main(["reliability", "--gpus", "0"])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "gpus" in err and len(err.splitlines()) == 1
