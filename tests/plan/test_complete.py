"""A layout given by its degrees: blank fields are completed and every completion is said."""

import json

import pytest
from typer.testing import CliRunner

from gigafactory.cli import app, main
from gigafactory.plan.complete import complete_layout
from gigafactory.spec import load_cluster, load_hardware, load_model

ARGS = ["plan", "--model", "llama3-8b", "--cluster", "meta-24k", "--gpus", "64", "--tp", "2",
        "--pp", "2", "--global-batch", "256", "--json"]  # fmt: skip


def test_blank_fields_are_searched_and_reported():
    out = json.loads(CliRunner().invoke(app, ARGS).output)
    layout = out["plan"]["layout"]
    notes = " ".join(out["notes"])
    for field in ("micro_batch", "vpp", "recompute", "sharding"):
        assert f"{field} " in notes and "left blank" in notes
    assert layout["micro_batch"] in (1, 2, 4, 8) and 16 % layout["vpp"] == 0
    assert layout["sharding"] == "zero1"


def test_given_fields_are_kept_and_not_reported():
    argv = [*ARGS, "--micro-batch", "1", "--vpp", "2", "--recompute", "full", "--sharding",
            "fsdp"]  # fmt: skip
    out = json.loads(CliRunner().invoke(app, argv).output)
    layout = out["plan"]["layout"]
    assert (layout["micro_batch"], layout["vpp"], layout["recompute"]) == (1, 2, "full")
    assert layout["sharding"] == "fsdp" and not any("left blank" in n for n in out["notes"])


def test_completion_is_the_fastest_that_fits():
    model, hw = load_model("llama3-8b"), load_hardware("h100-sxm")
    cluster = load_cluster("meta-24k").with_gpus(64)
    given = {"tp": 2, "pp": 2, "cp": 1, "ep": 1, "dp": 16, "global_batch": 256}
    best = complete_layout(model, hw, cluster, given)
    pinned = complete_layout(model, hw, cluster, {**given, "micro_batch": 1, "vpp": 1})
    assert best.estimate.fits and best.estimate.step_s <= pinned.estimate.step_s
    assert set(best.notes) == {"micro_batch", "vpp", "recompute", "sharding"}


def test_a_layout_no_completion_can_run_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*ARGS[:-1], "--vpp", "7"])  # 32 layers on pp 2: 16 per stage, not 7 chunks
    assert exit_.value.code == 2
    assert "does not divide the 32 layers" in capsys.readouterr().err
