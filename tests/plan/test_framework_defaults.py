"""Framework defaults a published row leaves implicit: Megatron-Bridge's distributed optimizer."""

import pytest

from gigafactory.plan.compute import software_for
from gigafactory.plan.memory import memory_per_gpu
from gigafactory.plan.runs import PublishedRun, read_runs
from gigafactory.plan.shard import params_per_gpu
from gigafactory.spec import load_hardware


def _row(**overrides):
    base = next(r for r in read_runs() if r.id == "MBb4").as_dict()
    return PublishedRun({**base, **overrides})


def test_megatron_bridge_defaults_to_the_distributed_optimizer():
    """Megatron-Bridge recipes build ``OptimizerConfig(use_distributed_optimizer=True)``
    (``recipes/utils/optimizer_utils.py``, ``distributed_fused_adam_with_cosine_annealing``)."""
    assert software_for("megatron-bridge-25.11").default_sharding == "zero1"
    assert software_for("megatron-lm-2021").default_sharding == "none"
    assert _row(fsdp="").layout().sharding == "zero1"
    assert _row(fsdp="fsdp").layout().sharding == "fsdp"
    assert _row(fsdp="", framework="megatron-lm-2021").layout().sharding == "none"
    assert all(
        r.layout().sharding == "zero1"
        for r in read_runs()
        if r.row["framework"].startswith("megatron-bridge") and not r.row["fsdp"].strip()
    )


def test_distributed_optimizer_shards_adam_state_of_gpt_oss_on_b200():
    """GPT-OSS 120B on 64 B200 (EP 8, DP 64): Adam's 12 B/param are sharded over the
    64-GPU DP group for dense weights and over the 8-GPU expert-DP group for the experts.
    Experts per GPU: 36 layers × 16 local experts × (2880·2·2880 + 2880·2880 + 2·2880 + 2880
    weights and biases) = 14.335e9; 12 B × 14.335e9 / 8 = 21.5 GB, plus the dense share
    (2.13e9 / 64 · 12 B = 0.40 GB)."""
    run = _row(fsdp="")
    model, layout = run.model(), run.layout()
    split = params_per_gpu(model, layout)
    assert split.expert == pytest.approx(14.335e9, rel=1e-3)
    mem = memory_per_gpu(model, layout, load_hardware("b200"))
    assert mem.optimizer_bytes == pytest.approx(12 * (split.dense / 64 + split.expert / 8))
    assert mem.optimizer_bytes / 1e9 == pytest.approx(21.9, abs=0.1)
    plain = memory_per_gpu(model, _row(fsdp="", framework="").layout(), load_hardware("b200"))
    assert plain.total_bytes / 1e9 > 370 > 200 > mem.total_bytes / 1e9
