"""The planner's layouts, run for real: tensor, expert and pipeline parallelism on gloo.

The fast tests hold ``ParallelDims`` to its checks (each refused layout names its reason).
The slow ones start torchrun with 2 and 4 processes on the tiny presets, once per module:

* each layout (tp2 from a plan's JSON, ep2, tp2×dp2, pp2 interleaved, pp2 1F1B) reaches the
  losses of one process within float tolerance;
* a checkpoint written under one layout resumes under another (tp2 → ep2, interleaved → 1F1B);
* a tp2 run SIGKILLed mid-run resumes to exactly the losses of an uninterrupted tp2 run;
* every rank holds exactly the parameter and gradient bytes the planner predicts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gigafactory.cli import main
from gigafactory.errors import GigafactoryError, LayoutError
from gigafactory.spec import load_model
from gigafactory.spec.layout import LayoutSpec
from gigafactory.train.data import Corpus, prepare
from gigafactory.train.parallelize import ParallelDims

from .conftest import TINY_DENSE, TINY_MOE, Launcher

HERE = Path(__file__).parent
MOE, DENSE = load_model(str(TINY_MOE)), load_model(str(TINY_DENSE))


# --- one place refuses what cannot run --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "dims", "match"),
    [
        (DENSE, dict(world_size=2, tp=2, dp=2), r"tp·pp·dp = 2·1·2 = 4.*--dp 1"),
        (DENSE, dict(world_size=2, tp=0), "--tp 0: must be a positive integer"),
        (DENSE, dict(world_size=3, tp=3, dp=1), "tp=3 does not divide the 4 attention heads"),
        (DENSE, dict(world_size=4, tp=4, dp=1), "splits the 2 KV heads"),
        (MOE, dict(world_size=4, tp=2, ep=2, dp=2), "tensor or expert parallelism"),
        (MOE, dict(world_size=2, ep=4, dp=2), "ep=4 does not divide the 4 experts|ep=4 must"),
        (DENSE, dict(world_size=2, ep=2, dp=2), "needs an MoE model"),
        (MOE, dict(world_size=2, pp=2, dp=1, micro_batch=1), "tied embeddings"),
        (DENSE, dict(world_size=2, pp=2, dp=1), "at least 2 micro-batches"),
        (DENSE, dict(world_size=2, pp=2, vpp=2, dp=1, micro_batch=1), r"pp·vpp = 2·2 = 4"),
        (DENSE, dict(world_size=1, vpp=2), "needs pipeline parallelism"),
    ],
    ids=[
        "world",
        "zero",
        "heads",
        "kv-heads",
        "tp-and-ep",
        "ep-experts",
        "ep-dense",
        "pp-tied",
        "pp-microbatches",
        "vpp-layers",
        "vpp-without-pp",
    ],
)
def test_refused_layouts_say_why(spec, dims, match):
    with pytest.raises(GigafactoryError, match=match):
        ParallelDims.build(global_batch=8, **dims).validate(spec)


def test_pipeline_of_an_moe_model_is_refused():
    untied = MOE.replace(tied_embeddings=False)
    with pytest.raises(LayoutError, match="load-balancing loss"):
        ParallelDims.build(2, 8, micro_batch=1, pp=2).validate(untied)


def test_the_plans_layout_is_the_trainers():
    layout = LayoutSpec(tp=2, dp=2, ep=1, micro_batch=2, global_batch=8)
    dims = ParallelDims.from_layout(layout, world_size=4)
    assert (dims.tp, dims.dp, dims.micro_batch, dims.global_batch, dims.grad_accum) == (
        2, 2, 2, 8, 2,
    )  # fmt: skip
    dims.validate(MOE)
    assert dims.layout().replace(sharding="zero1", precision="bf16") == layout
    with pytest.raises(LayoutError, match="context parallelism"):
        ParallelDims.from_layout(layout.replace(cp=2, dp=1), world_size=4)


def _plan_json(capsys, path: Path, *args: str) -> Path:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--model", str(TINY_MOE), "--json", *args])
    assert exit_.value.code in (0, None)
    path.write_text(capsys.readouterr().out)
    return path


@pytest.mark.parametrize("case", ["world", "cp", "junk", "missing"])
def test_bad_layout_from_plan_is_one_red_line(capsys, tmp_path, case):
    plan = tmp_path / "plan.json"
    if case == "world":  # a 2-GPU plan given to one process
        _plan_json(capsys, plan, "--gpus", "2", "--tp", "2", "--global-batch", "8")
    elif case == "cp":  # a plan (as the search may pick) with context parallelism
        data = json.loads(
            _plan_json(capsys, plan, "--gpus", "2", "--global-batch", "8").read_text()
        )
        data["plan"]["layout"].update(cp=2, dp=1, tp=1, ep=1)
        plan.write_text(json.dumps(data))
    elif case == "junk":
        plan.write_bytes(b"\x00\xffnot json")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(TINY_MOE), "--out", str(tmp_path / "run"),
              "--layout-from-plan", str(plan), "--posts", "2000"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    expect = {
        "world": "tp·pp·dp = 2·1·1 = 2",
        "cp": "context parallelism (cp=2)",
        "junk": "not the JSON of `gigafactory plan --json`",
        "missing": "cannot read it",
    }[case]
    assert expect in " ".join(err.split())


# --- real runs ---------------------------------------------------------------------------------

BASE = ["--batch", "8", "--steps", "4", "--ckpt-every", "2", "--no-export", "--posts", "2000",
        "--no-tensorboard"]  # fmt: skip


def _resume_copy(src: Path, dst: Path) -> Path:
    """A copy of a finished run with its last checkpoint removed: it resumes from step 2."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step_00000004")
    return dst


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of this module, each started once (they dominate its time)."""
    root, launch = tmp_path_factory.mktemp("layouts"), Launcher()
    dense4 = root / "tiny-dense4.yaml"  # 4 layers: 2 pipeline ranks × 2 interleaved chunks
    dense4.write_text(TINY_DENSE.read_text().replace("layers: 2", "layers: 4"))
    plan = root / "tp2.json"
    out: dict[str, Path] = {}
    logs: dict[str, str] = {}

    data = root / "prepared"  # one tokenizer and token shards, copied into every run
    prepare(Corpus(None, 2000, 0), data, MOE.vocab)

    def train(name: str, model: Path, *args: str, nproc: int = 0, into: Path | None = None):
        run_dir = into or root / name
        if into is None:
            shutil.copytree(data, run_dir)
        argv = ["train", "--model", str(model), "--out", str(run_dir), *BASE, *args]
        if nproc:
            done = launch.gigafactory(*argv, nproc=nproc)
            assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
            logs[name] = " ".join(done.stdout.split())
        else:  # in this process: no start-up to pay
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            assert exit_.value.code in (0, None), name
        out[name] = run_dir

    written = subprocess.run(
        [sys.executable, "-m", "gigafactory.cli", "plan", "--model", str(TINY_MOE), "--gpus",
         "2", "--tp", "2", "--global-batch", "8", "--micro-batch", "4", "--json"],
        capture_output=True, text=True, env=launch.env(), timeout=120,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    plan.write_text(written.stdout)

    train("one-moe", TINY_MOE, "--micro-batch", "4")
    train("tp2", TINY_MOE, "--layout-from-plan", str(plan), nproc=2)
    train("ep2", TINY_MOE, "--ep", "2", nproc=2, into=_resume_copy(out["tp2"], root / "ep2"))
    train("tp2xdp2", TINY_MOE, "--tp", "2", "--dp", "2", nproc=4)
    train("one-dense4", dense4, "--micro-batch", "2")
    train("pp2-vpp2", dense4, "--pp", "2", "--vpp", "2", "--micro-batch", "2", nproc=2)
    resumed = _resume_copy(out["pp2-vpp2"], root / "pp2-1f1b")
    train("pp2-1f1b", dense4, "--pp", "2", "--micro-batch", "2", nproc=2, into=resumed)

    killed = root / "killed"
    shutil.copytree(data, killed)
    died = launch.python(str(HERE / "killed_run.py"), str(TINY_MOE), str(killed), "4", "2",
                         "3", "2", "4", nproc=2)  # fmt: skip
    assert died.returncode != 0 and "SIGKILL" in died.stderr + died.stdout, died.stderr[-2000:]
    partial = launch.losses(killed)
    train("killed", TINY_MOE, "--tp", "2", "--micro-batch", "4", nproc=2, into=killed)
    return out, logs, partial


def _assert_close(got: dict[int, float], want: dict[int, float], steps: list[int]) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], abs=2e-5), f"step {step}"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "reference", "steps"),
    [
        ("tp2", "one-moe", [1, 2, 3, 4]),
        ("tp2xdp2", "one-moe", [1, 2, 3, 4]),
        ("ep2", "one-moe", [3, 4]),  # resumed from tp2's step 2: resharded on load
        ("pp2-vpp2", "one-dense4", [1, 2, 3, 4]),
        ("pp2-1f1b", "one-dense4", [3, 4]),  # resumed from the interleaved run's step 2
    ],
)
def test_each_layout_reaches_the_one_process_losses(runs, name, reference, steps):
    out, logs, _ = runs
    got, want = Launcher.losses(out[name]), Launcher.losses(out[reference])
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    assert want[4] < want[1]  # it learns
    _assert_close(got, want, steps)
    layout = {"tp2": "tp=2 pp=1 ep=1 dp=1", "tp2xdp2": "tp=2 pp=1 ep=1 dp=2",
              "ep2": "tp=1 pp=1 ep=2 dp=2", "pp2-vpp2": "tp=1 pp=2 vpp=2 ep=1 dp=1",
              "pp2-1f1b": "tp=1 pp=2 ep=1 dp=1"}[name]  # fmt: skip
    assert layout in logs[name]
    if steps[0] == 3:
        assert "resumed from" in logs[name] and "step_00000002" in logs[name]


@pytest.mark.slow
def test_sigkill_under_tp2_resumes_to_exactly_the_uninterrupted_losses(runs):
    out, logs, partial = runs
    assert max(partial) == 3  # died after step 3, before its end
    assert "resumed from" in logs["killed"] and "step_00000002" in logs["killed"]
    assert Launcher.losses(out["killed"]) == Launcher.losses(out["tp2"])  # exactly, every step


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tp2", "tp2xdp2", "ep2", "pp2-vpp2", "pp2-1f1b"])
def test_every_rank_holds_the_bytes_the_planner_predicts(runs, name):
    out, logs, _ = runs
    report = json.loads((out[name] / "layout.json").read_text())
    ranks = {"tp2": 2, "ep2": 2, "tp2xdp2": 4, "pp2-vpp2": 2, "pp2-1f1b": 2}[name]
    assert len(report["ranks"]) == ranks
    first = [r for r in report["ranks"] if r["pp_rank"] == 0]  # the stage the planner models
    assert first
    for row in first:
        assert row["param_bytes"] == report["planned"]["param_bytes"], row
        assert row["grad_bytes"] == report["planned"]["grad_bytes"], row
    assert "memory per rank" in logs[name] and "(the planner:" in logs[name]
