"""Training launched by a real Slurm (one controller, one node on localhost): ``sbatch
scripts/train.sbatch`` runs a 2-process torchrun through ``srun``; ``scancel`` mid-run and a
resubmission continue to exactly (==) the losses of an uninterrupted job; a tensor-parallel
layout (``TP=2``) trains through the same script. Everything rendezvous on 127.0.0.1.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import pytest

from .conftest import wait_for

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train.sbatch"
TINY_DENSE = REPO / "tests" / "train" / "tiny-dense.yaml"
BIN = Path(sys.executable).parent
STEPS, EVERY = 40, 5
# the production header asks for 2 nodes × 8 GPUs × 64 CPUs; this cluster is one CPU node
ON_THIS_NODE = ["--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={os.cpu_count() or 1}"]
TRAIN_ARGS = ["--ckpt-every", str(EVERY), "--batch", "8", "--posts", "2000", "--no-tensorboard",
              "--no-export"]  # fmt: skip


def job_env(out: Path, **layout: str) -> dict[str, str]:
    return {
        "MODEL_NAME": str(TINY_DENSE), "OUT": str(out), "NPROC_PER_NODE": "2",
        "GIGAFACTORY": str(BIN / "gigafactory"), "TORCHRUN": str(BIN / "torchrun"),
        "RDZV_HOST": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",  # loopback only
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **layout,
    }  # fmt: skip


def losses(run: Path) -> dict[int, float]:
    """step → loss; a resumed job's later line for a step wins (a line being written is not
    read yet)."""
    out: dict[int, float] = {}
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            out[row["step"]] = row["loss"]
    return out


def submit(slurm, out: Path, log: Path, steps: int = STEPS, **layout: str) -> int:
    return slurm.sbatch(*ON_THIS_NODE, f"--output={log}", str(SCRIPT), "--steps", str(steps),
                        *TRAIN_ARGS, env=job_env(out, **layout))  # fmt: skip


@pytest.fixture(scope="module")
def straight(slurm, tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted DP=2 job."""
    root = tmp_path_factory.mktemp("straight")
    job = submit(slurm, root / "run", root / "job.out", DP="2")
    assert slurm.wait_job(job, 120) == "COMPLETED", (root / "job.out").read_text()
    log = (root / "job.out").read_text()
    assert "2 × CPU" in log  # one torch.distributed world of 2 processes under srun
    out = losses(root / "run")
    assert sorted(out) == list(range(1, STEPS + 1))
    return out


def test_scancel_then_resubmit_continues_to_exactly_the_uninterrupted_losses(
    slurm, straight, tmp_path
):
    run = tmp_path / "cancelled"
    job = submit(slurm, run, tmp_path / "first.out")
    # once a checkpoint is complete (published by a rename) and training has gone on past it,
    # freeze the job's processes (SIGSTOP through Slurm): how far it got is then fixed, however
    # fast this machine runs the steps left, and the cancel cannot come after the last step
    ckpt = run / "checkpoints" / f"step_{EVERY:08d}"
    deadline = time.monotonic() + 120
    while not (ckpt.is_dir() and max(losses(run), default=0) > EVERY + 1):
        assert time.monotonic() < deadline and slurm.job_state(job) in ("PENDING", "RUNNING")
        time.sleep(0.02)
    assert slurm.run("scancel", "--signal=STOP", str(job)).returncode == 0
    state = wait_for(
        lambda: (s := slurm.job_state(job)) not in ("RUNNING", "SIGNALING") and s,
        30, "the STOP signal to land", 0.02,
    )  # fmt: skip
    assert state == "STOPPED", "the job ended before it could be stopped"
    frozen = max(losses(run))
    assert slurm.run("scancel", str(job)).returncode == 0
    assert slurm.wait_job(job, 60) == "CANCELLED"
    done = max(losses(run))
    assert EVERY + 1 < frozen <= done < STEPS  # it really stopped mid-run, after a checkpoint

    job = submit(slurm, run, tmp_path / "second.out")
    assert slurm.wait_job(job, 120) == "COMPLETED", (tmp_path / "second.out").read_text()
    resumed = " ".join((tmp_path / "second.out").read_text().split())
    assert "resumed from" in resumed and "step_0000" in resumed
    assert losses(run) == straight  # exactly, every step


def test_a_tensor_parallel_layout_trains_through_sbatch(slurm, straight, tmp_path):
    log = tmp_path / "tp.out"
    job = submit(slurm, tmp_path / "run", log, steps=6, TP="2")
    assert slurm.wait_job(job, 180) == "COMPLETED", log.read_text()
    assert "tp=2 pp=1 ep=1 dp=1" in " ".join(log.read_text().split())
    got = losses(tmp_path / "run")
    assert sorted(got) == list(range(1, 7)) and all(math.isfinite(v) for v in got.values())
    # the same model and data as the DP=2 job: the same loss before any update, then it learns
    assert got[1] == pytest.approx(straight[1], rel=1e-4)
    assert got[6] < got[1] - 0.1


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"TP": "two"}, "TP=two is not a positive integer"),
        ({"TP": "3"}, "TP=3 × PP=1 does not divide the job's 2 processes"),
        ({"DP": "4"}, "TP=1 × PP=1 × DP=4 = 4 processes but the job has 2"),
        ({"EP": "4"}, "EP=4 must divide DP × TP = 2"),
        ({"RDZV_HOST": "no-such-host.invalid"}, "RDZV_HOST=no-such-host.invalid does not resolve"),
    ],
)
def test_a_layout_or_rendezvous_that_cannot_work_fails_before_launching(
    slurm, tmp_path, layout, message
):
    log = tmp_path / "job.out"
    job = submit(slurm, tmp_path / "run", log, **layout)
    assert slurm.wait_job(job, 60) == "FAILED"
    assert message in log.read_text()
    assert not (tmp_path / "run").exists()  # no torchrun was started
