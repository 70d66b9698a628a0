"""The plan checks facility power against the cluster's supply and says so when it is over."""

import json

import pytest

from gigafactory.cli import main
from gigafactory.errors import SpecError
from gigafactory.plan.run import estimate_run, facility_power_mw, gpus_within_budget
from gigafactory.plan.step import estimate_step
from gigafactory.spec import ClusterSpec, LayoutSpec, load_cluster, load_hardware, load_model

# Grok-1's default best layout on the whole of Colossus (as `gigafactory plan` finds it).
COLOSSUS_LAYOUT = ["--tp", "8", "--pp", "1", "--cp", "2", "--ep", "4", "--global-batch", "6250"]


def _run(cluster: ClusterSpec):
    model, hardware = load_model("llama3-8b"), load_hardware(cluster.gpu)
    dp = cluster.gpus // 8
    layout = LayoutSpec(tp=8, dp=dp, global_batch=dp, micro_batch=1)
    step = estimate_step(model, layout, hardware, cluster, model.seq_len)
    return estimate_run(step, cluster, hardware, 1e12), hardware


def test_colossus_states_its_150_mw_supply():
    assert load_cluster("colossus").power_budget_mw == 150


def test_power_over_the_supply_is_flagged_with_the_gpus_it_feeds():
    colossus = load_cluster("colossus")
    run, h100 = _run(colossus)
    assert run.power_mw == pytest.approx(165.75)  # 12,500 nodes × 10.2 kW × PUE 1.3
    assert run.power_exceeds_budget
    # ⌊150 MW / (10.2 kW · 1.3)⌋ = 11,312 nodes = 90,496 GPUs, and they fit.
    assert run.gpus_within_budget == 90_496
    assert (
        facility_power_mw(90_496, colossus, h100) <= 150 < facility_power_mw(90_504, colossus, h100)
    )
    assert "exceeds the 150 MW supply by 15.8 MW" in run.power_note()
    assert "90,496 GPUs" in run.power_note()


def test_power_within_the_supply_and_without_one():
    colossus = load_cluster("colossus").with_gpus(65_536)
    run, _ = _run(colossus)
    assert not run.power_exceeds_budget and "within the 150 MW supply" in run.power_note()
    unknown, h100 = _run(load_cluster("meta-24k"))
    assert unknown.power_budget_mw == 0 and not unknown.power_exceeds_budget
    assert unknown.power_note() == "" and gpus_within_budget(load_cluster("meta-24k"), h100) == 0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_cluster_refuses_a_bad_budget(bad):
    with pytest.raises(SpecError) as info:
        ClusterSpec(name="x", gpu="h100-sxm", gpus=8, power_budget_mw=bad)
    assert info.value.field == "power_budget_mw"


def test_plan_says_so_in_table_and_json(capsys):
    with pytest.raises(SystemExit) as done:
        main(["plan", *COLOSSUS_LAYOUT])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "165.8 MW (OVER the 150 MW supply)" in out
    assert "power: facility power 165.8 MW exceeds the 150 MW supply" in out
    with pytest.raises(SystemExit):
        main(["plan", *COLOSSUS_LAYOUT, "--json"])
    run = json.loads(capsys.readouterr().out)["run"]
    assert run["power_exceeds_budget"] is True
    assert run["power_budget_mw"] == 150 and run["gpus_within_budget"] == 90_496
    assert run["power_note"].startswith("facility power 165.8 MW exceeds")
