"""Nothing crashes, nothing good is deleted: pruning that keeps verified checkpoints, runs
stopped on a non-finite loss before any checkpoint of it, the memory check before allocating,
exports and generation from the newest verified weights, metrics without repeated steps, and
every bad option as one red line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from gigafactory.cli import main
from gigafactory.spec import load_model
from gigafactory.spec.layout import LayoutSpec
from gigafactory.train.checkpoint import Checkpointer, verify
from gigafactory.train.errors import CheckpointError
from gigafactory.train.export import find_weights
from gigafactory.train.fit import DoesNotFitError, check_fits, free_bytes, predicted_memory
from gigafactory.train.metrics import read_metrics
from gigafactory.train.model import Transformer
from gigafactory.train.parallelize import Runtime

HERE = Path(__file__).parent
TINY = str(HERE / "tiny-dense.yaml")
FAST = ["--posts", "2000", "--no-tensorboard", "--batch", "4"]
RUNTIME = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
SPEC = load_model(TINY)
IDENTITY = {"model": SPEC.to_dict(), "data": "abc", "corpus": "test corpus"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.out, captured.err


def train(capsys, out: Path, *extra: str) -> tuple[int, str, str]:
    return run(capsys, "train", "--model", TINY, "--out", str(out), *FAST, *extra)


def corrupt(folder: Path) -> None:
    shard = next(p for p in folder.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))


def state(step: int) -> dict:
    torch.manual_seed(step)
    return {"model": Transformer(SPEC).state_dict(), "train": {"step": step}}


# --- pruning -----------------------------------------------------------------------------


def test_pruning_never_drops_a_verified_checkpoint_for_a_corrupt_newer_one(tmp_path):
    root = tmp_path / "checkpoints"
    old = Checkpointer(root, RUNTIME, IDENTITY, keep=5)
    for step in (2, 6, 8):
        old.save(step, state(step))
    corrupt(root / "step_00000006")
    corrupt(root / "step_00000008")
    ckpt = Checkpointer(root, RUNTIME, IDENTITY, keep=2)
    path, warnings = ckpt.latest()  # resumes from the only good one
    assert path.name == "step_00000002" and len(warnings) == 2
    for step in (3, 4):  # the resumed run writes fresh checkpoints
        ckpt.save(step, state(step))
    names = sorted(p.name for p in ckpt.complete())
    # the two newest that verify stay; the corrupt newer ones are left for the user to see
    assert names == ["step_00000003", "step_00000004", "step_00000006", "step_00000008"]
    assert ckpt.latest()[0].name == "step_00000004"
    ckpt.save(5, state(5))
    names = sorted(p.name for p in ckpt.complete())
    assert names == ["step_00000004", "step_00000005", "step_00000006", "step_00000008"]


def test_corrupt_checkpoints_older_than_a_good_one_are_pruned(tmp_path):
    ckpt = Checkpointer(tmp_path, RUNTIME, IDENTITY, keep=3)
    for step in (1, 2):
        ckpt.save(step, state(step))
    corrupt(tmp_path / "step_00000001")
    ckpt = Checkpointer(tmp_path, RUNTIME, IDENTITY, keep=3)  # the next run checks afresh
    ckpt.save(3, state(3))
    assert [p.name for p in ckpt.complete()] == ["step_00000003", "step_00000002"]


def test_every_checkpoint_corrupt_is_refused_unless_restart(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = train(capsys, out, "--steps", "2", "--ckpt-every", "1", "--no-export")
    assert code == 0, err
    for folder in (out / "checkpoints").iterdir():
        corrupt(folder)
    code, _, err = train(capsys, out, "--steps", "3", "--no-export")
    assert code == 2
    assert "every checkpoint" in err and "--restart" in err and "Traceback" not in err
    assert len(list((out / "checkpoints").iterdir())) == 2  # nothing was overwritten
    code, outp, err = train(capsys, out, "--steps", "3", "--no-export", "--restart")
    assert code == 0, err
    assert "deleted corrupt checkpoint" in outp
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000003"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_restart_is_refused_as_an_unknown_value(capsys, tmp_path):
    code, _, err = train(capsys, tmp_path / "r", "--restart=yes")
    assert code == 2 and "Traceback" not in err


# --- non-finite losses ------------------------------------------------------------------


def test_a_non_finite_loss_stops_the_run_before_saving_it(capsys, tmp_path):
    out = tmp_path / "nan"
    code, _, err = train(capsys, out, "--steps", "6", "--ckpt-every", "1", "--lr", "1e6")
    assert code == 2
    assert "not both finite" in err and "lower --lr" in err and "Traceback" not in err
    assert not (out / "model").exists()  # no export of the broken weights
    saved = sorted((out / "checkpoints").iterdir())
    assert len(saved) < 6
    for folder in saved:  # what was saved is finite and verifies
        manifest, _ = verify(folder)
        assert manifest is not None
        target = state(0)
        Checkpointer(out / "checkpoints", RUNTIME, IDENTITY).load(folder, target)
        assert all(torch.isfinite(t).all() for t in target["model"].values())


def test_a_non_finite_gradient_with_a_finite_loss_stops_the_run_before_saving_it(capsys, tmp_path):
    """From step 3 on, a bad op (a square root at 0 times 0: forward 0, backward NaN) adds
    nothing to the logits but poisons every gradient: the loss stays finite, the run stops."""
    from gigafactory.train.model import OutputHead

    calls = []

    def poison(module, args, output):
        if not isinstance(module, OutputHead):
            return None
        calls.append(1)
        return output + (output * 0).sqrt() if len(calls) >= 3 else None

    out = tmp_path / "nangrad"
    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        code, _, err = train(capsys, out, "--steps", "5", "--ckpt-every", "1")
    finally:
        handle.remove()
    assert code == 2 and "Traceback" not in err
    err = " ".join(err.split())
    assert "step 3: loss" in err and "gradient norm nan are not both finite" in err
    loss = float(err.split("step 3: loss ")[1].split()[0])
    assert loss == loss and abs(loss) < 100  # the loss itself was finite
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_00000001",
        "step_00000002",
    ]
    assert not (out / "model").exists()


# --- memory check -----------------------------------------------------------------------


def test_a_model_too_large_for_the_device_is_refused_with_the_breakdown(capsys, tmp_path):
    code, _, err = run(
        capsys, "train", "--model", "grok-1", "--out", str(tmp_path / "g"), "--batch", "1",
        "--no-tensorboard",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    assert "grok-1 does not fit" in err
    for part in ("weights", "gradients", "optimizer", "activations", "GB free"):
        assert part in err
    assert not (tmp_path / "g" / "data").exists()  # refused before preparing anything


def test_check_fits_uses_the_planner_breakdown():
    layout = LayoutSpec(dp=1, sharding="fsdp", micro_batch=2, global_batch=2, precision="fp32")
    mem = predicted_memory(SPEC, layout, 64, capacity_bytes=1e12)
    params = sum(p.numel() for p in Transformer(SPEC).parameters())
    assert mem.params_per_gpu == pytest.approx(params, rel=1e-6)
    assert mem.weights_bytes == pytest.approx(4 * params, rel=1e-6)  # fp32
    assert check_fits(SPEC, layout, 64, torch.device("cpu"), free=1e12).fits
    with pytest.raises(DoesNotFitError, match="does not fit"):
        check_fits(SPEC, layout, 64, torch.device("cpu"), free=mem.total_bytes * 0.99)
    # two ranks of FSDP halve the sharded state each holds
    two = predicted_memory(SPEC, layout.replace(dp=2), 64, capacity_bytes=1e12)
    assert two.optimizer_bytes == pytest.approx(mem.optimizer_bytes / 2)


def test_free_bytes_reads_meminfo_and_shares_it_among_local_ranks(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 100 kB\nMemAvailable:    2048 kB\n")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert free_bytes(torch.device("cpu"), meminfo) == 1024 * 1024


# --- newest verified weights, real step, no repeated metrics -----------------------------


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run exported at step 3, then trained on to step 5 without exporting, then a step
    logged after its last checkpoint (as a killed run leaves behind) and resumed."""
    out = tmp_path_factory.mktemp("resumed")
    base = ["train", "--model", TINY, "--out", str(out), *FAST, "--ckpt-every", "1"]
    for extra in (["--steps", "3"], ["--steps", "5", "--no-export"]):
        with pytest.raises(SystemExit) as exit_:
            main([*base, *extra])
        assert exit_.value.code == 0
    return out


def test_run_folder_uses_the_newest_verified_checkpoint_over_an_older_export(resumed):
    assert json.loads((resumed / "model" / "config.json").read_text())["step"] == 3
    weights = find_weights(resumed)
    assert weights.checkpoint and weights.step == 5 and weights.folder.name == "step_00000005"
    corrupt(resumed / "checkpoints" / "step_00000005")
    weights = find_weights(resumed)
    assert weights.step == 4  # the newest that verifies
    # restore step 5 for the other tests of this module
    corrupt(resumed / "checkpoints" / "step_00000005")
    assert find_weights(resumed).step == 5


def test_export_records_the_real_step_and_the_newest_weights(capsys, resumed, tmp_path):
    code, out, err = run(
        capsys, "export", "--checkpoint", str(resumed), "--out", str(tmp_path / "e")
    )
    assert code == 0, err
    assert "step 5" in out, out
    config = json.loads((tmp_path / "e" / "config.json").read_text())
    assert config["step"] == 5
    with safe_open(str(tmp_path / "e" / "model.safetensors"), "pt") as f:
        assert f.metadata()["step"] == "5"
        exported = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    target = {"model": Transformer(SPEC).state_dict(), "train": {"step": 0}}
    Checkpointer(resumed / "checkpoints", RUNTIME, IDENTITY).load(
        resumed / "checkpoints" / "step_00000005", target
    )
    torch.testing.assert_close(exported, target["model"])


def test_generate_from_a_run_folder_reads_the_newest_checkpoint(capsys, resumed):
    code, out, err = run(
        capsys, "generate", "--checkpoint", str(resumed), "Hi", "--max-tokens", "3"
    )
    assert code == 0, err
    assert out.startswith("Hi"), out


def test_metrics_have_no_repeated_steps_after_a_resume(capsys, resumed):
    import shutil

    shutil.rmtree(resumed / "checkpoints" / "step_00000005")  # as if killed after logging 5
    code, _, err = train(capsys, resumed, "--steps", "6", "--no-export", "--ckpt-every", "1")
    assert code == 0, err
    steps = [r["step"] for r in read_metrics(resumed / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resuming_with_steps_below_the_checkpoint_says_so(capsys, resumed):
    code, _, err = train(capsys, resumed, "--steps", "2")
    assert code == 2 and "Traceback" not in err
    assert "beyond --steps 2" in err and "step_0000000" in err


# --- one red line for each bad option ------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lr", "nan"], "--lr must be a finite number > 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--warmup", "-7"], "--warmup must be >= 0"),
        (["--seq", "-5"], "--seq must be >= 0"),
        (["--micro-batch", "-1"], "--micro-batch must be >= 0"),
        (["--dp", "-2"], "--dp must be >= 0"),
        (["--posts", "0"], "--posts must be >= 1"),
    ],
)
def test_bad_train_options_are_one_line(capsys, tmp_path, args, message):
    code, _, err = train(capsys, tmp_path / "bad", "--steps", "2", *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_binary_junk_jsonl_is_one_line(capsys, tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(bytes(range(256)) * 20)
    code, _, err = train(capsys, tmp_path / "r", "--data", str(junk))
    assert code == 2 and "not UTF-8" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_out_pointing_at_a_file_is_one_line(capsys, tmp_path, resumed):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    code, _, err = train(capsys, a_file)
    assert code == 2 and "is a file" in err
    code, _, err = run(capsys, "export", "--checkpoint", str(resumed), "--out", str(a_file))
    assert code == 2 and "is a file" in err and a_file.read_text() == "x"


@pytest.mark.parametrize(("device", "message"), [("cuda", "--device cuda"), ("tpu", "cpu or cuda")])
def test_generate_on_a_missing_device_is_one_line(capsys, resumed, device, message):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run(capsys, "generate", "--checkpoint", str(resumed), "x", "--device", device)
    assert code == 2 and message in err and "Traceback" not in err


def test_missing_checkpoint_path_is_one_line(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--checkpoint", str(tmp_path / "nope"), "x")
    assert code == 2 and "does not exist" in err
    with pytest.raises(CheckpointError):
        find_weights(tmp_path / "nope")
