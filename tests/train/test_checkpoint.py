"""Atomic checkpoints: round trip, and corrupted / partial / foreign ones detected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gigafactory.spec import load_model
from gigafactory.train.checkpoint import MANIFEST, Checkpointer, verify
from gigafactory.train.errors import CheckpointError
from gigafactory.train.model import Transformer
from gigafactory.train.parallelize import Runtime

RUNTIME = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"), distributed=False)
SPEC = load_model(str(Path(__file__).parent / "tiny-dense.yaml"))


def identity(spec=SPEC, data="abc"):
    return {"model": spec.to_dict(), "data": data, "corpus": "test corpus"}


def state(seed: int) -> dict:
    torch.manual_seed(seed)
    return {"model": Transformer(SPEC).state_dict(), "train": {"step": seed}}


@pytest.fixture
def ckpt(tmp_path):
    c = Checkpointer(tmp_path / "checkpoints", RUNTIME, identity(), keep=5)
    for step in (2, 4, 6):
        c.save(step, state(step))
    return c


def test_round_trip_and_newest_first(ckpt):
    path, warnings = ckpt.latest()
    assert path.name == "step_00000006" and warnings == []
    target = state(0)
    ckpt.load(path, target)
    assert target["train"]["step"] == 6
    torch.testing.assert_close(target["model"], state(6)["model"])
    manifest = json.loads((path / MANIFEST).read_text())
    assert ".metadata" in manifest["files"] and manifest["step"] == 6


def test_corrupted_checkpoint_is_skipped_with_a_message(ckpt):
    newest = ckpt.root / "step_00000006"
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    shard.write_bytes(bytes(data))
    path, warnings = ckpt.latest()
    assert path.name == "step_00000004"
    assert len(warnings) == 1 and "step_00000006" in warnings[0] and "checksum" in warnings[0]


def test_partial_checkpoints_never_load(ckpt):
    (ckpt.root / "step_00000006" / MANIFEST).unlink()  # died before the marker
    truncated = ckpt.root / "step_00000004"
    shard = next(p for p in truncated.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])  # died mid-write of a shard
    tmp = ckpt.root / ".tmp-step_00000008"  # died before the rename
    tmp.mkdir()
    (tmp / "__0_0.distcp").write_bytes(b"partial")
    path, warnings = ckpt.latest()
    assert path.name == "step_00000002"
    text = "\n".join(warnings)
    assert "never finished" in text and ".tmp-step_00000008" in text
    assert "no manifest.json" in text and "bytes" in text
    assert not tmp.exists()  # the partial write is cleaned up
    assert verify(ckpt.root / "step_00000006")[0] is None


def test_checkpoint_of_another_spec_or_data_is_an_error_naming_the_fix(ckpt):
    other = Checkpointer(ckpt.root, RUNTIME, identity(SPEC.replace(layers=3)))
    with pytest.raises(CheckpointError, match=r"layers: 2 ≠ 3.*--model tiny-dense.*new --out"):
        other.latest()
    with pytest.raises(CheckpointError, match="other data"):
        Checkpointer(ckpt.root, RUNTIME, identity(data="xyz")).latest()


def test_keep_prunes_old_complete_checkpoints(tmp_path):
    c = Checkpointer(tmp_path, RUNTIME, identity(), keep=2)
    for step in (1, 2, 3):
        c.save(step, state(step))
    assert [p.name for p in c.complete()] == ["step_00000003", "step_00000002"]
    assert c.latest()[0].name == "step_00000003"
