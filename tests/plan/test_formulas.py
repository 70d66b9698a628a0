"""Each formula of the planner against a hand-worked number."""

import pytest

from gigafactory.plan import comms, memory
from gigafactory.plan.compute import gemm_size_factor
from gigafactory.plan.run import facility_power_mw
from gigafactory.spec import LayoutSpec, ModelSpec, load_cluster, load_hardware


def test_korthikanti_activation_per_layer():
    # s=2048, b=1, h=12288, a=96: sbh(34 + 5as/h) = 2048·12288·(34 + 5·96·2048/12288)
    s, b, h, a = 2048, 1, 12288, 96
    assert memory.korthikanti_activation_bytes(s, b, h, a) == pytest.approx(
        2048 * 12288 * (34 + 80)
    )
    assert memory.korthikanti_activation_bytes(s, b, h, a, t=8) == pytest.approx(
        2048 * 12288 * 114 / 8
    )
    assert memory.korthikanti_activation_bytes(s, b, h, a, t=8, sp=False) == pytest.approx(
        2048 * 12288 * (10 + 24 / 8 + 80 / 8)
    )
    assert memory.korthikanti_activation_bytes(s, b, h, a, 8, "selective") == pytest.approx(
        2048 * 12288 * 34 / 8
    )
    assert memory.korthikanti_activation_bytes(s, b, h, a, 8, "full") == pytest.approx(
        2 * 2048 * 12288 / 8
    )


def test_generalised_activations_reduce_to_korthikanti_for_gpt():
    gpt = ModelSpec(name="g", layers=1, hidden=1024, heads=16, vocab=100, seq_len=2048, mlp="gelu")
    per_token = memory.layer_activation_bytes_per_token(gpt, False, flash=False, dropout=True)
    assert per_token == pytest.approx(34 * 1024 + 5 * 16 * 2048)


def test_stage_activations_with_and_without_sequence_parallelism():
    """Per TP rank: everything / t with SP; without it the norms' (2·2h) and the QKV and
    first MLP GEMMs' inputs (2h each) stay whole (Korthikanti Sec. 4.2.1's 10sbh less the
    dropout masks). Full recompute: the layer inputs of every in-flight micro-batch plus one
    layer's full activations, once."""
    gpt = ModelSpec(name="g", layers=8, hidden=1024, heads=16, vocab=100, seq_len=2048, mlp="gelu")
    h, tok = 1024, 2048
    whole = memory.layer_activation_bytes_per_token(gpt, False)  # flash, no dropout
    sp = LayoutSpec(tp=8, dp=1, global_batch=1)
    no_sp = LayoutSpec(tp=8, dp=1, global_batch=1, sequence_parallel=False)
    assert memory.activation_bytes(gpt, sp) == pytest.approx(8 * tok * whole / 8)
    assert memory.activation_bytes(gpt, no_sp) == pytest.approx(
        8 * tok * (8 * h + (whole - 8 * h) / 8)
    )
    # pp 4 (2 layers a stage), 4 micro-batches in flight, full recompute, SP
    full = LayoutSpec(tp=8, pp=4, dp=1, global_batch=16, recompute="full")
    assert memory.activation_bytes(gpt, full) == pytest.approx((2 * 2 * h * 4 + whole) * tok / 8)


def test_inflight_microbatches():
    assert memory.inflight_microbatches(LayoutSpec(pp=8, dp=1, global_batch=64)) == 8
    assert memory.inflight_microbatches(LayoutSpec(pp=8, dp=1, global_batch=4)) == 4
    # interleaved: p·(1 + (p−1)/(p·v)) = 8·(1 + 7/16) = 11.5
    inter = LayoutSpec(pp=8, vpp=2, dp=1, global_batch=64)
    assert memory.inflight_microbatches(inter) == pytest.approx(11.5)


def test_ring_collectives():
    bw = 100e9
    assert comms.ring_allreduce_s(1e9, 8, bw) == pytest.approx(2 * 7 / 8 * 1e9 / bw)
    assert comms.ring_allgather_s(1e9, 4, bw) == pytest.approx(3 / 4 * 1e9 / bw)
    assert comms.all_to_all_s(1e9, 2, bw) == pytest.approx(0.5e9 / bw)
    assert comms.ring_allreduce_s(1e9, 1, bw) == 0


def test_bubble():
    assert comms.bubble_fraction(8, 32) == pytest.approx(7 / 32)
    assert comms.bubble_fraction(8, 32, vpp=4) == pytest.approx(7 / 128)
    assert comms.bubble_fraction(1, 32) == 0


def test_hierarchical_collective_uses_nics_across_nodes():
    h = load_hardware("h100-sxm")
    net = comms.links(h, load_cluster("colossus"))
    assert net.nic_bytes_s == pytest.approx(400 / 8 * 1e9 * 0.95)
    inside = comms.group_collective_s("allgather", 1e9, 8, 1, net)
    across = comms.group_collective_s("allgather", 1e9, 8, 8, net)
    assert across > inside  # stride 8: every rank on another node, NIC-bound


def test_gemm_size_factor():
    assert gemm_size_factor(128, 128, 128) == pytest.approx(1 / 8)
    assert gemm_size_factor(1e9, 1e9, 1e9) == pytest.approx(1, rel=1e-6)


def test_facility_power_colossus():
    # 12,500 nodes · 10.2 kW · PUE 1.3 = 165.75 MW
    c = load_cluster("colossus")
    assert facility_power_mw(c.gpus, c, load_hardware(c.gpu)) == pytest.approx(165.75)
