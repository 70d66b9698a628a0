"""Gradient buffer and data-parallel reduction: one dtype per framework, the same for memory
and communication."""

import dataclasses

import pytest

from gigafactory.plan import comms
from gigafactory.plan.compute import FRAMEWORKS, software_for
from gigafactory.plan.memory import grad_bytes_per_param, memory_per_gpu
from gigafactory.plan.runs import PublishedRun, read_runs
from gigafactory.plan.shard import params_per_gpu
from gigafactory.plan.step import PARAM_GATHER_BYTES, estimate_step
from gigafactory.plan.validate import generic_cluster, predict_run
from gigafactory.spec import load_hardware

RUNS = {r.id: r for r in read_runs()}


def test_sourced_defaults_per_framework():
    """Megatron-LM forces fp32 accumulation and reduction for bf16 (``arguments.py``), keeps
    fp16 gradients for fp16; DeepSpeed's BF16_Optimizer reduces fp32 accumulators;
    Megatron-Bridge's ``bf16_mixed`` recipe sets ``grad_reduce_in_fp32=True``."""
    for name in ("megatron-core-0.8", "megatron-lm-2021", "megatron-deepspeed", "megatron-bridge"):
        sw = software_for(name)
        assert grad_bytes_per_param("bf16", sw) == 4.0
        assert grad_bytes_per_param("fp8", sw) == 4.0
        assert grad_bytes_per_param("fp16", sw) == 2.0
        assert grad_bytes_per_param("fp32", sw) == 4.0
    assert (
        grad_bytes_per_param(
            "bf16", dataclasses.replace(software_for(""), grad_reduce_in_fp32=False)
        )
        == 2.0
    )


def test_published_rows_reduce_in_their_sourced_dtype():
    """N21 (Megatron-LM 2021, fp16): 2 B. MH (Megatron-Core through Megatron-LM, bf16) and BL
    (Megatron-DeepSpeed bf16): 4 B. Every Megatron-Bridge 25.11 row: 2 B, because its
    performance script sets ``grad_reduce_in_fp32 = False`` (``grad_reduce`` column)."""
    for run in RUNS.values():
        gb = grad_bytes_per_param(run.layout().precision, run.software())
        if run.id.startswith("MB"):
            assert run.row["grad_reduce"] == "bf16" and gb == 2.0, run.id
        elif run.id.startswith("N21"):
            assert gb == 2.0, run.id
        else:
            assert gb == 4.0, run.id
    bad = PublishedRun({**RUNS["MH1"].as_dict(), "grad_reduce": "int8"})
    with pytest.raises(Exception, match="grad_reduce"):
        bad.software()


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp8"])
@pytest.mark.parametrize("sharding", ["none", "zero1", "fsdp"])
def test_memory_and_communication_use_the_same_gradient_bytes(framework, precision, sharding):
    """For every framework the gradient buffer (memory) and the bytes the DP reduction moves
    (time) are the same bytes per parameter."""
    sw = software_for(framework)
    run = RUNS["MH1"]
    layout = dataclasses.replace(run.layout(), sharding=sharding, precision=precision)
    hw = load_hardware("h100-sxm")
    net = comms.links(hw, generic_cluster(hw, layout.gpus))
    model = run.model()
    split = params_per_gpu(model, layout)
    gb = grad_bytes_per_param(precision, sw)
    mem = memory_per_gpu(model, layout, hw, software=sw)
    est = estimate_step(
        model, layout, hw, generic_cluster(hw, layout.gpus), check=False, software=sw
    )
    assert est.memory == mem
    n, stride = split.dense_dp_group, layout.tp

    def coll(kind, nbytes):
        return comms.group_collective_s(kind, nbytes, n, stride, net) + comms.group_collective_s(
            kind, 0.0, split.expert_dp_group, layout.tp * layout.cp * layout.ep, net
        )

    gather = coll("allgather", split.dense * PARAM_GATHER_BYTES)
    if sharding == "none":
        assert mem.gradients_bytes == split.total * gb
        assert est.time.dp_raw_s == pytest.approx(coll("allreduce", split.dense * gb))
    elif sharding == "zero1":
        assert mem.gradients_bytes == split.total * gb
        assert est.time.dp_raw_s == pytest.approx(coll("allgather", split.dense * gb) + gather)
    else:
        layer = split.total / model.layers
        assert mem.gradients_bytes == pytest.approx((split.total / n + 2 * layer) * gb)
        scatter = coll("allgather", split.dense * gb)
        assert est.time.dp_raw_s == pytest.approx(layout.microbatches * (2 * gather + scatter))


def test_dp_reduce_of_mh1_by_hand_fp32_vs_bf16():
    """MH1 (GPT ~2B, 1,744,930,816 parameters: 24 × (4h² + 2·h·4h + 2h) + 2·V·h + h with
    h = 2048, V = 131072), TP 1, DP 48 with the distributed optimizer on a generic H100
    cluster (8 GPUs per node). The reduce-scatter of B bytes runs over NVLink inside the
    node, then 1/8 of it over the NICs among 6 nodes:
    t = 7/8 · B / (450 GB/s · 0.8) + 5/6 · (B/8) / (400 Gb/s / 8 · 0.9) + latency.
    fp32 (Megatron-LM's default for bf16): B = 4·N = 6.980 GB → 16.965 + 16.157 ms = 33.12 ms
    (+ 0.054 ms ring latency, 7 NVLink and 5 fabric hops); bf16: half the bandwidth terms, 16.56 ms less. The parameter
    all-gather is bf16 either way, so the step's raw DP time differs by exactly that."""
    n_params = 24 * (4 * 2048**2 + 2 * 2048 * 8192 + 2 * 2048) + 2 * 131072 * 2048 + 2048
    assert n_params == 1_744_930_816
    run = RUNS["MH1"]
    assert params_per_gpu(run.model(), run.layout()).dense == n_params

    def bandwidth_s(nbytes):
        return 7 / 8 * nbytes / (450e9 * 0.8) + 5 / 6 * (nbytes / 8) / (400e9 / 8 * 0.9)

    assert bandwidth_s(4 * n_params) == pytest.approx(0.03312, abs=1e-5)
    fp32 = predict_run(run)
    bf16 = predict_run(PublishedRun({**run.as_dict(), "grad_reduce": "bf16"}))
    # ring reduce-scatter: n−1 hops on each level (7 on NVLink, 5 across the 6 nodes)
    latency = 7 * comms.NVLINK_LATENCY_S + 5 * comms.FABRIC_LATENCY_S
    rs_fp32 = comms.group_collective_s(
        "allgather",
        4.0 * n_params,
        48,
        1,
        comms.links(load_hardware("h100-sxm"), generic_cluster(load_hardware("h100-sxm"), 48)),
    )
    assert rs_fp32 == pytest.approx(bandwidth_s(4 * n_params) + latency)
    assert fp32.time.dp_raw_s - bf16.time.dp_raw_s == pytest.approx(
        bandwidth_s(2 * n_params), rel=1e-9
    )
    assert fp32.time.dp_raw_s - bf16.time.dp_raw_s == pytest.approx(0.01656, abs=1e-5)
    assert fp32.memory.gradients_bytes == 4 * n_params
    assert bf16.memory.gradients_bytes == 2 * n_params
