"""The planner's layouts, run for real: tensor, expert and pipeline parallelism on gloo.

The fast tests hold ``ParallelDims`` to its checks (each refused layout names its reason).
The slow ones start torchrun with 2 and 4 processes on the tiny presets, once per module:

* each layout reaches the losses (and load-balancing losses) of one process within float
  tolerance: on the tied MoE preset tp2 (from a plan's JSON), ep2, tp2×ep2, tp2×dp2, pp2
  interleaved and pp2×tp2 1F1B (tied embeddings and MoE blocks in the stages); tp2 on the
  dense preset (MLP plan, SDPA, untied vocabulary-parallel head);
* a checkpoint written under one layout resumes under another, with another number of
  ranks (ep2 → tp2×dp2, 1 process → pp2×tp2, pp2 interleaved → 1 process), and a pipeline
  checkpoint holds one tied embedding;
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
        (MOE, dict(world_size=2, ep=4, dp=2), "ep=4 does not divide the 4 experts|ep=4 must"),
        (DENSE, dict(world_size=2, ep=2, dp=2), "needs an MoE model"),
        (DENSE, dict(world_size=2, pp=2, dp=1), "at least 2 micro-batches"),
        (DENSE, dict(world_size=2, pp=2, vpp=2, dp=1, micro_batch=1), r"pp·vpp = 2·2 = 4"),
        (DENSE, dict(world_size=1, vpp=2), "needs pipeline parallelism"),
    ],
    ids=[
        "world",
        "zero",
        "heads",
        "kv-heads",
        "ep-experts",
        "ep-dense",
        "pp-microbatches",
        "vpp-layers",
        "vpp-without-pp",
    ],
)
def test_refused_layouts_say_why(spec, dims, match):
    with pytest.raises(GigafactoryError, match=match):
        ParallelDims.build(global_batch=8, **dims).validate(spec)


def test_what_the_trainer_does_not_build_is_refused_in_validate_too():
    """A plan's context parallelism and uneven stages, and a --seq beyond the model's, are
    refused by the same ``validate`` as every degree, each with its reason."""
    layout = LayoutSpec(tp=1, dp=2, cp=2, micro_batch=1, global_batch=8)
    with pytest.raises(LayoutError, match=r"context parallelism \(cp=2\).*plan with --cp 1"):
        ParallelDims.from_layout(layout, world_size=4).validate(DENSE)
    uneven = LayoutSpec(pp=2, dp=1, first_stage_layers=1, micro_batch=1, global_batch=8)
    with pytest.raises(LayoutError, match=r"uneven pipeline stages.*equal stages"):
        ParallelDims.from_layout(uneven, world_size=2).validate(DENSE.replace(layers=3))
    with pytest.raises(LayoutError, match=r"--seq 65 is longer than .* seq_len 64"):
        ParallelDims.build(1, 8).validate(DENSE, seq=65)
    ParallelDims.build(1, 8).validate(DENSE, seq=64)  # the model's own length runs


@pytest.mark.parametrize(
    "layout",
    [
        dict(tp=2, ep=2, dp=2, world_size=4),  # experts over ep, each tp rank its positions
        dict(pp=2, dp=1, world_size=2, micro_batch=1),  # tied embeddings, MoE in stages
        dict(pp=2, vpp=1, tp=2, ep=2, dp=2, world_size=8, micro_batch=1),
    ],
    ids=["tp2xep2", "pp2-tied-moe", "pp2xtp2xep2"],
)
def test_the_grok_combinations_are_accepted(layout):
    ParallelDims.build(global_batch=8, **layout).validate(MOE)


def test_the_planners_grok1_layout_runs_but_for_its_cp():
    """`gigafactory plan --model grok-1` picks tp=8 pp=4 vpp=16 cp=4 ep=8 dp=512: refused for
    its cp alone; the same layout with cp folded into dp is accepted."""
    planned = LayoutSpec(tp=8, pp=4, vpp=16, cp=4, ep=8, dp=512, sharding="fsdp",
                         micro_batch=2, global_batch=4096)  # fmt: skip
    grok = load_model("grok-1")
    with pytest.raises(LayoutError, match="cp=4"):
        ParallelDims.from_layout(planned, world_size=planned.gpus).validate(grok)
    no_cp = planned.replace(cp=1, dp=2048, global_batch=16384)
    ParallelDims.from_layout(no_cp, world_size=no_cp.gpus).validate(grok)


def test_the_plans_layout_is_the_trainers():
    layout = LayoutSpec(tp=2, dp=2, ep=1, micro_batch=2, global_batch=8)
    dims = ParallelDims.from_layout(layout, world_size=4)
    assert (dims.tp, dims.dp, dims.micro_batch, dims.global_batch, dims.grad_accum) == (
        2, 2, 2, 8, 2,
    )  # fmt: skip
    dims.validate(MOE)
    assert dims.layout().replace(sharding="zero1", precision="bf16") == layout


@pytest.mark.parametrize("spec", [MOE, DENSE], ids=["moe", "dense"])
def test_the_meta_device_build_has_the_one_process_weights(spec):
    """``build_model`` builds on the meta device and lets each rank fill its shards: in one
    process that is every parameter, with the values of a model built directly (same seed);
    nothing of the model is allocated before the layout is applied."""
    import torch

    from gigafactory.train.loop import build_model
    from gigafactory.train.model import Transformer
    from gigafactory.train.parallelize import Runtime

    cpu = Runtime(0, 1, 0, torch.device("cpu"), distributed=False)
    built = build_model(spec, cpu, ParallelDims.build(1, 8), "fp32", False, seed=7).parts[0]
    torch.manual_seed(7)
    direct = Transformer(spec)
    got, want = built.state_dict(), direct.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    torch.testing.assert_close(built.rope_cos, direct.rope_cos, rtol=0, atol=0)
    torch.manual_seed(8)
    assert not torch.equal(Transformer(spec).tok_emb.weight, want["tok_emb.weight"])


def _plan_json(capsys, path: Path, *args: str) -> Path:
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--model", str(TINY_MOE), "--json", *args])
    assert exit_.value.code in (0, None)
    path.write_text(capsys.readouterr().out)
    return path


@pytest.mark.parametrize("case", ["world", "cp", "junk", "missing", "flags"])
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
    flags = ["--tp", "2", "--ep", "2"] if case == "flags" else []  # the plan says the layout
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(TINY_MOE), "--out", str(tmp_path / "run"),
              "--layout-from-plan", str(plan), "--posts", "2000", *flags])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    expect = {
        "world": "tp·pp·dp = 2·1·1 = 2",
        "cp": "context parallelism (cp=2)",
        "junk": "not the JSON of `gigafactory plan --json`",
        "missing": "cannot read it",
        "flags": "--layout-from-plan takes the layout from the plan; drop --tp 2 --ep 2",
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


class Runs:
    """Runs of one group, each started once (they dominate this module's time), from one
    prepared corpus (tokenizer and token shards copied into every run folder)."""

    def __init__(self, root: Path, data: Path):
        self.root, self.data, self.launch = root, data, Launcher()
        self.out: dict[str, Path] = {}
        self.logs: dict[str, str] = {}
        self.partial: dict[int, float] = {}  # the losses a killed run logged before dying

    def train(
        self, name: str, model: Path, *args: str, nproc: int = 0, resume: str = "",
        into: Path | None = None,
    ) -> None:  # fmt: skip
        """Train ``name``: in this process (no start-up to pay) or under torchrun; ``resume``:
        from a copy of that run's step-2 checkpoint; ``into``: an existing run folder."""
        run_dir = into or self.root / name
        if resume:
            _resume_copy(self.out[resume], run_dir)
        elif into is None:
            shutil.copytree(self.data, run_dir)
        argv = ["train", "--model", str(model), "--out", str(run_dir), *BASE, *args]
        if nproc:
            done = self.launch.gigafactory(*argv, nproc=nproc)
            assert done.returncode == 0, f"{name}: {done.stderr[-3000:]}"
            self.logs[name] = " ".join(done.stdout.split())
        else:
            with pytest.raises(SystemExit) as exit_:
                main(argv)
            assert exit_.value.code in (0, None), name
        self.out[name] = run_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("prepared")
    prepare(Corpus(None, 2000, 0), data, MOE.vocab)
    return data


@pytest.fixture(scope="module")
def flat(tmp_path_factory, prepared) -> Runs:
    """The tied MoE preset without pipeline: tp2 (from a plan's JSON), ep2, tp2×ep2, tp2×dp2
    (2 ranks → 4: it resumes ep2's step 2), and a tp2 run SIGKILLed after step 3."""
    runs = Runs(tmp_path_factory.mktemp("flat"), prepared)
    written = subprocess.run(
        [sys.executable, "-m", "gigafactory.cli", "plan", "--model", str(TINY_MOE), "--gpus",
         "2", "--tp", "2", "--global-batch", "8", "--micro-batch", "4", "--json"],
        capture_output=True, text=True, env=runs.launch.env(), timeout=120,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    plan = runs.root / "tp2.json"
    plan.write_text(written.stdout)
    runs.train("one-moe", TINY_MOE, "--micro-batch", "4")
    runs.train("tp2", TINY_MOE, "--layout-from-plan", str(plan), nproc=2)
    runs.train("ep2", TINY_MOE, "--ep", "2", nproc=2)
    runs.train("tp2xep2", TINY_MOE, "--tp", "2", "--ep", "2", "--dp", "2", nproc=4)
    runs.train("tp2xdp2", TINY_MOE, "--tp", "2", "--dp", "2", nproc=4, resume="ep2")

    killed = runs.root / "killed"
    shutil.copytree(prepared, killed)
    died = runs.launch.python(str(HERE / "killed_run.py"), str(TINY_MOE), str(killed), "4",
                              "2", "3", "2", "4", nproc=2)  # fmt: skip
    assert died.returncode != 0 and "SIGKILL" in died.stderr + died.stdout, died.stderr[-2000:]
    runs.partial = Launcher.losses(killed)
    runs.train("killed", TINY_MOE, "--tp", "2", "--micro-batch", "4", nproc=2, into=killed)
    return runs


@pytest.fixture(scope="module")
def staged(tmp_path_factory, prepared) -> Runs:
    """Pipelines of the tied MoE preset at 4 layers: pp2 interleaved; pp2×tp2 1F1B resumed
    from one process's step 2; one process resumed from pp2's. And tp2 on the dense preset."""
    runs = Runs(tmp_path_factory.mktemp("staged"), prepared)
    moe4, dense4 = runs.root / "tiny-moe4.yaml", runs.root / "tiny-dense4.yaml"
    moe4.write_text(TINY_MOE.read_text().replace("layers: 2", "layers: 4"))  # tied, MoE
    dense4.write_text(TINY_DENSE.read_text().replace("layers: 2", "layers: 4"))  # untied head
    runs.train("one-moe4", moe4, "--micro-batch", "2")
    runs.train("pp2-vpp2", moe4, "--pp", "2", "--vpp", "2", "--micro-batch", "2", nproc=2)
    runs.train("pp2xtp2-1f1b", moe4, "--pp", "2", "--tp", "2", "--micro-batch", "2", nproc=4,
               resume="one-moe4")  # fmt: skip
    runs.train("one-from-pp2", moe4, "--micro-batch", "2", resume="pp2-vpp2")
    runs.train("one-dense4", dense4, "--micro-batch", "4")
    runs.train("tp2-dense", dense4, "--tp", "2", nproc=2)
    return runs


def _group(request: pytest.FixtureRequest, name: str) -> Runs:
    """The fixture whose group holds run ``name``."""
    flat = {"one-moe", "tp2", "ep2", "tp2xep2", "tp2xdp2", "killed"}
    return request.getfixturevalue("flat" if name in flat else "staged")


def _assert_close(got: dict[int, float], want: dict[int, float], steps: list[int]) -> None:
    for step in steps:
        assert got[step] == pytest.approx(want[step], abs=2e-5), f"step {step}"


LAYOUTS = {
    # name: (reference run, steps compared, layout as the run names it); fixture by reference
    "tp2": ("one-moe", [1, 2, 3, 4], "tp=2 pp=1 ep=1 dp=1"),
    "ep2": ("one-moe", [1, 2, 3, 4], "tp=1 pp=1 ep=2 dp=2"),
    "tp2xep2": ("one-moe", [1, 2, 3, 4], "tp=2 pp=1 ep=2 dp=2"),
    "tp2xdp2": ("one-moe", [3, 4], "tp=2 pp=1 ep=1 dp=2"),  # resumed from ep2's step 2
    "pp2-vpp2": ("one-moe4", [1, 2, 3, 4], "tp=1 pp=2 vpp=2 ep=1 dp=1"),
    "pp2xtp2-1f1b": ("one-moe4", [3, 4], "tp=2 pp=2 ep=1 dp=1"),  # resumed from one process
    "one-from-pp2": ("one-moe4", [3, 4], ""),  # one process resumed from pp2-vpp2
    "tp2-dense": ("one-dense4", [1, 2, 3, 4], "tp=2 pp=1 ep=1 dp=1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_reaches_the_one_process_losses(request, name):
    reference, steps, layout = LAYOUTS[name]
    runs = _group(request, reference)
    out, logs = runs.out, runs.logs
    got, want = Launcher.losses(out[name]), Launcher.losses(out[reference])
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    assert want[4] < want[1]  # it learns
    _assert_close(got, want, steps)
    aux, want_aux = Launcher.aux_losses(out[name]), Launcher.aux_losses(out[reference])
    for step in steps:  # the load-balancing loss too (0 for the dense model)
        assert aux[step] == pytest.approx(want_aux[step], abs=1e-6), f"aux at step {step}"
    if layout:
        assert layout in logs[name]
    if steps[0] == 3 and name in logs:
        assert "resumed from" in logs[name] and "step_00000002" in logs[name]


@pytest.mark.slow
def test_a_pipeline_checkpoint_holds_one_tied_embedding(staged):
    """The first and the last stage both hold ``tok_emb.weight``; DCP writes it once, whole,
    and it loads under one process (``one-from-pp2``, compared above)."""
    from torch.distributed.checkpoint import FileSystemReader

    out = staged.out
    folder = out["pp2-vpp2"] / "checkpoints" / "step_00000004"
    saved = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    embedding = [k for k in saved if k.startswith("model.") and ("emb" in k or "head" in k)]
    assert embedding == ["model.tok_emb.weight"]
    assert [tuple(c.sizes) for c in saved["model.tok_emb.weight"].chunks] == [(MOE.vocab, 64)]
    one = out["one-moe4"] / "checkpoints" / "step_00000004"
    alone = FileSystemReader(str(one)).read_metadata().state_dict_metadata
    assert {k for k in saved if k.startswith("model.")} == {
        k for k in alone if k.startswith("model.")
    }  # the same logical tensors as one process writes


@pytest.mark.slow
def test_sigkill_under_tp2_resumes_to_exactly_the_uninterrupted_losses(flat):
    out, logs, partial = flat.out, flat.logs, flat.partial
    assert max(partial) == 3  # died after step 3, before its end
    assert "resumed from" in logs["killed"] and "step_00000002" in logs["killed"]
    assert Launcher.losses(out["killed"]) == Launcher.losses(out["tp2"])  # exactly, every step


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["tp2", "tp2xdp2", "ep2", "tp2xep2", "pp2-vpp2", "pp2xtp2-1f1b", "tp2-dense"]
)
def test_every_rank_holds_the_bytes_the_planner_predicts(request, name):
    runs = _group(request, name)
    out, logs = runs.out, runs.logs
    report = json.loads((out[name] / "layout.json").read_text())
    ranks = 4 if name in ("tp2xdp2", "tp2xep2", "pp2xtp2-1f1b") else 2
    assert len(report["ranks"]) == ranks
    first = [r for r in report["ranks"] if r["pp_rank"] == 0]  # the stage the planner models
    assert first
    for row in first:
        assert row["param_bytes"] == report["planned"]["param_bytes"], row
        assert row["grad_bytes"] == report["planned"]["grad_bytes"], row
    assert "memory per rank" in logs[name] and "(the planner:" in logs[name]
