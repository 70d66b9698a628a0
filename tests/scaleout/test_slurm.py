"""Training launched by a real Slurm (one controller, one node on localhost): ``sbatch
scripts/train.sbatch`` runs a 2-process torchrun through ``srun``; ``scancel`` mid-run and a
resubmission continue to exactly (==) the losses of an uninterrupted job.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "train.sbatch"
TINY_DENSE = REPO / "tests" / "train" / "tiny-dense.yaml"
BIN = Path(sys.executable).parent
STEPS, EVERY = 40, 5
# the production header asks for 2 nodes × 8 GPUs × 64 CPUs; this cluster is one CPU node
ON_THIS_NODE = ["--nodes=1", "--gpus-per-node=0", f"--cpus-per-task={os.cpu_count() or 1}"]
TRAIN_ARGS = ["--steps", str(STEPS), "--ckpt-every", str(EVERY), "--batch", "8", "--posts",
              "2000", "--no-tensorboard", "--no-export"]  # fmt: skip


def job_env(out: Path, **layout: str) -> dict[str, str]:
    return {
        "MODEL_NAME": str(TINY_DENSE), "OUT": str(out), "NPROC_PER_NODE": "2",
        "GIGAFACTORY": str(BIN / "gigafactory"), "TORCHRUN": str(BIN / "torchrun"),
        "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "200", **layout,
    }  # fmt: skip


def losses(run: Path) -> dict[int, float]:
    """step → loss; a resumed job's later line for a step wins."""
    out: dict[int, float] = {}
    if (run / "metrics.jsonl").exists():
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out[row["step"]] = row["loss"]
    return out


def submit(slurm, out: Path, log: Path, **layout: str) -> int:
    return slurm.sbatch(*ON_THIS_NODE, f"--output={log}", str(SCRIPT), *TRAIN_ARGS,
                        env=job_env(out, **layout))  # fmt: skip


def test_scancel_then_resubmit_continues_to_exactly_the_uninterrupted_losses(slurm, tmp_path):
    straight = tmp_path / "straight"
    job = submit(slurm, straight, tmp_path / "straight.out", DP="2")
    assert slurm.wait_job(job, 120) == "COMPLETED", (tmp_path / "straight.out").read_text()
    log = (tmp_path / "straight.out").read_text()
    assert "2 × CPU" in log  # one torch.distributed world of 2 processes under srun
    assert sorted(losses(straight)) == list(range(1, STEPS + 1))

    run = tmp_path / "cancelled"
    job = submit(slurm, run, tmp_path / "first.out")
    # cancel once a checkpoint is complete and training has gone on past it
    ckpt = run / "checkpoints" / f"step_{EVERY:08d}"
    deadline = time.monotonic() + 120
    while not (ckpt.is_dir() and max(losses(run), default=0) > EVERY + 1):
        assert time.monotonic() < deadline and slurm.job_state(job) in ("PENDING", "RUNNING")
        time.sleep(0.05)
    assert slurm.run("scancel", str(job)).returncode == 0
    assert slurm.wait_job(job, 60) == "CANCELLED"
    done = max(losses(run))
    assert EVERY < done < STEPS  # it really stopped mid-run

    job = submit(slurm, run, tmp_path / "second.out")
    assert slurm.wait_job(job, 120) == "COMPLETED", (tmp_path / "second.out").read_text()
    resumed = " ".join((tmp_path / "second.out").read_text().split())
    assert "resumed from" in resumed and "step_0000" in resumed
    assert losses(run) == losses(straight)  # exactly, every step


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"TP": "two"}, "TP=two is not a positive integer"),
        ({"TP": "3"}, "TP=3 × PP=1 does not divide the job's 2 processes"),
        ({"DP": "4"}, "TP=1 × PP=1 × DP=4 = 4 processes but the job has 2"),
        ({"EP": "4"}, "EP=4 must divide DP × TP = 2"),
    ],
)
def test_a_layout_that_does_not_fit_the_job_fails_before_launching(
    slurm, tmp_path, layout, message
):
    log = tmp_path / "job.out"
    job = submit(slurm, tmp_path / "run", log, **layout)
    assert slurm.wait_job(job, 60) == "FAILED"
    assert message in log.read_text()
    assert not (tmp_path / "run").exists()  # no torchrun was started
