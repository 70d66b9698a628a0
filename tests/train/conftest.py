"""Shared helpers of the trainer's tests: tiny model files and subprocess launchers.

Every process runs with one thread (OMP_NUM_THREADS=1), as the 2-core CI machine needs and as
exact-equality tests need (the same thread count gives the same float reductions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
TINY_MOE = HERE / "tiny-moe.yaml"
TINY_DENSE = HERE / "tiny-dense.yaml"
BIN = Path(sys.executable).parent
COMMON = ["--posts", "2000", "--no-tensorboard"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Launcher:
    """Starts real processes: the console script, torchrun, or a Python script."""

    tiny_moe, tiny_dense, common = TINY_MOE, TINY_DENSE, COMMON

    @staticmethod
    def env() -> dict[str, str]:
        e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", COLUMNS="200")
        e.pop("RANK", None)
        return e

    def gigafactory(self, *args: str, nproc: int = 0, timeout: float = 240):
        """Run the console script, under torchrun with ``nproc`` processes if nproc > 0."""
        return self.run([str(BIN / "gigafactory"), *args], nproc, timeout)

    def python(self, *args: str, nproc: int = 0, timeout: float = 240):
        """Run a Python script, under torchrun with ``nproc`` processes if nproc > 0."""
        return self.run([*([] if nproc else [sys.executable]), *args], nproc, timeout)

    def run(self, cmd: list[str], nproc: int, timeout: float) -> subprocess.CompletedProcess:
        if nproc:
            cmd = [str(BIN / "torchrun"), "--nproc_per_node", str(nproc), *cmd]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=timeout)

    @staticmethod
    def losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
        """step → loss from metrics.jsonl; a resumed run's later line for a step wins."""
        out: dict[int, float] = {}
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out[row["step"]] = row[key]
        return out

    @staticmethod
    def aux_losses(run_dir: Path) -> dict[int, float]:
        """step → MoE load-balancing loss from metrics.jsonl."""
        return Launcher.losses(run_dir, "aux_loss")


@pytest.fixture
def launch() -> Launcher:
    return Launcher()


@pytest.fixture
def tiny_moe_spec():
    from gigafactory.spec import load_model

    return load_model(str(TINY_MOE))
