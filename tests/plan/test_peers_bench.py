"""bench/plan_vs_peers.py: which rows each peer cannot express, and the planner's side."""

import importlib.util
import statistics
from pathlib import Path

import pytest

from gigafactory.plan.runs import read_runs
from gigafactory.plan.validate import validate

PATH = Path(__file__).resolve().parents[2] / "bench" / "plan_vs_peers.py"
SPEC = importlib.util.spec_from_file_location("plan_vs_peers", PATH)
peers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(peers)


def test_rows_a_peer_cannot_express_are_named():
    runs = {r.id: r for r in read_runs()}
    moe = next(r for r in runs.values() if r.model().is_moe)
    assert "MoE / expert parallelism" in peers.gaps(moe, peers.CALCULON)
    cp = next(r for r in runs.values() if r.layout().cp > 1)
    assert "context parallelism" in peers.gaps(cp, peers.LLM_ANALYSIS)
    gpt = runs["N21a"]  # Megatron-LM 2021 GPT on A100: both peers express it
    assert peers.gaps(gpt, peers.CALCULON) == [] and peers.gaps(gpt, peers.LLM_ANALYSIS) == []


def test_planner_side_matches_validate_and_bad_checkout_is_refused(monkeypatch, capsys):
    result = peers.compare(None)
    report = validate()
    planner = result["summary"]["planner"]
    in_scope = [abs(r.error_pct) for r in report.rows if r.in_scope]
    assert planner["rows"] == len(in_scope)
    assert planner["median_abs_error_pct"] == pytest.approx(statistics.median(in_scope))
    monkeypatch.setattr("sys.argv", ["plan_vs_peers.py", "--calculon", "/no/such/dir"])
    with pytest.raises(SystemExit) as exit_:
        peers.main()
    assert exit_.value.code == 2
    assert "no calculon/llm package" in capsys.readouterr().err


def test_holdout_set_is_compared_row_by_row():
    from gigafactory.plan.runs import default_holdout_path

    result = peers.compare(None, default_holdout_path())
    assert [r["id"] for r in result["rows"]] == [r.id for r in read_runs(default_holdout_path())]
