"""Real torch.distributed runs (gloo, torchrun) and real crashes (SIGKILL), on CPU.

* 2 processes reach the losses of 1 process with the same global batch and micro-batch.
* A run SIGKILLed mid-training, then restarted, continues to exactly (==) the losses of an
  uninterrupted run.
* A corrupted newest checkpoint is skipped with a message and the run resumes from the one
  before.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
HERE = Path(__file__).parent


@pytest.mark.parametrize("kind", ["moe", "dense"])
def test_two_processes_match_one_process(tmp_path, launch, kind):
    model = launch.tiny_moe if kind == "moe" else launch.tiny_dense
    args = ["train", "--model", str(model), "--steps", "5", "--batch", "8", "--no-export",
            *launch.common]  # fmt: skip
    # same global batch (8) and micro-batch (4): one rank accumulates two, two ranks one each
    one = launch.gigafactory(*args, "--micro-batch", "4", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = launch.gigafactory(*args, "--out", str(tmp_path / "two"), nproc=2)
    assert two.returncode == 0, two.stderr
    a, b = launch.losses(tmp_path / "one"), launch.losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    assert a[5] < a[1]  # it learns
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4)
    assert "grad accumulation 2" in one.stdout and "2 × CPU" in two.stdout


def test_sigkill_then_restart_continues_to_exactly_the_uninterrupted_losses(tmp_path, launch):
    steps, every, kill_at = "8", "3", "5"
    straight = launch.gigafactory(
        "train", "--model", str(launch.tiny_moe), "--steps", steps, "--ckpt-every", every,
        "--batch", "8", "--no-export", "--out", str(tmp_path / "straight"), *launch.common,
    )  # fmt: skip
    assert straight.returncode == 0, straight.stderr

    crashed = tmp_path / "crashed"
    killed = launch.python(
        str(HERE / "killed_run.py"), str(launch.tiny_moe), str(crashed), steps, every, kill_at
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert max(launch.losses(crashed)) == int(kill_at)  # it died after step 5, before finishing

    restarted = launch.gigafactory(
        "train", "--model", str(launch.tiny_moe), "--steps", steps, "--ckpt-every", every,
        "--batch", "8", "--no-export", "--out", str(crashed), *launch.common,
    )  # fmt: skip
    assert restarted.returncode == 0, restarted.stderr
    assert "resumed from" in restarted.stdout and "step_00000003" in restarted.stdout
    assert launch.losses(crashed) == launch.losses(tmp_path / "straight")  # exactly, every step


def test_corrupted_newest_checkpoint_is_skipped_and_the_run_resumes_before_it(tmp_path, launch):
    run = tmp_path / "run"
    base = ["train", "--model", str(launch.tiny_dense), "--batch", "8", "--ckpt-every", "2",
            "--no-export", "--out", str(run), *launch.common]  # fmt: skip
    assert launch.gigafactory(*base, "--steps", "4").returncode == 0
    newest = run / "checkpoints" / "step_00000004"
    shard = next(newest.glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-7])  # a torn write
    again = launch.gigafactory(*base, "--steps", "5")
    assert again.returncode == 0, again.stderr
    out = " ".join(again.stdout.split())
    assert "skipped checkpoint" in out and "step_00000004" in out
    assert "resumed from" in out and "step_00000002" in out
