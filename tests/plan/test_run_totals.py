"""Whole-run totals: days, goodput after failures, power, energy and cost."""

import pytest

from gigafactory.plan.run import estimate_run, facility_power_mw
from gigafactory.plan.step import estimate_step
from gigafactory.reliability import ReliabilityScenario, analyze
from gigafactory.spec import LayoutSpec, load_cluster, load_hardware, load_model


@pytest.fixture(scope="module")
def llama_step():
    model = load_model("llama3-8b")
    cluster = load_cluster("meta-24k").with_gpus(1024)
    hardware = load_hardware(cluster.gpu)
    layout = LayoutSpec(tp=1, pp=1, dp=1024, global_batch=1024, micro_batch=1)
    return estimate_step(model, layout, hardware, cluster, model.seq_len), cluster, hardware


def test_power_is_nodes_times_node_power_times_pue():
    colossus = load_cluster("colossus")
    h100 = load_hardware("h100-sxm")
    # 12,500 DGX-class nodes at 10.2 kW, PUE 1.3.
    assert facility_power_mw(100_000, colossus, h100) == pytest.approx(12_500 * 10.2e3 * 1.3 / 1e6)


def test_run_totals_follow_from_throughput_and_goodput(llama_step):
    step, cluster, hardware = llama_step
    run = estimate_run(step, cluster, hardware, tokens=1e12)
    assert run.days == pytest.approx(1e12 / step.tokens_per_s / 86400)
    expected = analyze(ReliabilityScenario(gpus=step.gpus, work_days=run.days))
    assert run.goodput == pytest.approx(expected.goodput)
    assert run.wall_days == pytest.approx(run.days / run.goodput)
    assert run.gpu_hours == pytest.approx(step.gpus * run.wall_days * 24)
    assert run.energy_mwh == pytest.approx(run.power_mw * run.wall_days * 24)
    assert run.cost_usd == pytest.approx(
        run.gpu_hours * cluster.usd_per_gpu_hour + run.energy_mwh * 1000 * cluster.usd_per_kwh
    )


def test_slower_restarts_cost_days_and_money(llama_step):
    step, cluster, hardware = llama_step
    fast = estimate_run(step, cluster, hardware, 1e12, ReliabilityScenario(restart_s=60))
    slow = estimate_run(step, cluster, hardware, 1e12, ReliabilityScenario(restart_s=1800))
    assert fast.days == pytest.approx(slow.days)
    assert slow.goodput < fast.goodput
    assert slow.wall_days > fast.wall_days and slow.cost_usd > fast.cost_usd
