"""The vectorised layout search: same numbers as the scalar model, the whole space, uneven
pipelines, the modelling fixes it exposed (each worked by hand), and physical limits."""

import dataclasses
import itertools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gigafactory import vec
from gigafactory.cli import app, main
from gigafactory.errors import LayoutError, SpecError
from gigafactory.plan import comms
from gigafactory.plan.compute import (
    efficiency,
    head_ops,
    layer_ops,
    layer_pass_times,
    op_time_s,
    stage_pass_times,
    stage_total_s,
)
from gigafactory.plan.search import (
    TIME_TIE,
    ArrayLayout,
    enumerate_degrees,
    search_layouts,
    smooth_batches,
)
from gigafactory.plan.shard import params_per_gpu, uneven_stages
from gigafactory.plan.step import dp_bucket_params, estimate_step, roofline_s
from gigafactory.plan.validate import generic_cluster
from gigafactory.spec import LayoutSpec, load_cluster, load_hardware, load_model
from gigafactory.spec.layout import RECOMPUTE, SHARDING

H100 = load_hardware("h100-sxm")
A100 = load_hardware("a100-80gb")
COLOSSUS = load_cluster("colossus")
MODELS = ["grok-1", "llama3-405b", "deepseek-v3", "gpt-oss-120b", "gpt3-175b", "mixtral-8x7b"]


def _parts(est):
    return {**est.time.parts(), "step": est.step_s, "mfu": est.mfu, "hfu": est.hfu,
            "memory": est.memory.total_bytes, "fits": est.memory.fits * 1.0,
            "dp_raw": est.time.dp_raw_s}  # fmt: skip


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(MODELS),
    sharding=st.sampled_from(SHARDING),
    recompute=st.sampled_from(RECOMPUTE),
    precision=st.sampled_from(["bf16", "fp8"]),
    grad=st.sampled_from(["", "fp32", "bf16"]),
    batch=st.sampled_from([512, 1536, 4096]),
    seed=st.integers(0, 2**31),
)
def test_vectorised_evaluation_equals_the_scalar_one(
    name, sharding, recompute, precision, grad, batch, seed
):
    """40 random candidates of the space through ``estimate_step`` as arrays, and one by
    one as ``LayoutSpec``: every part of the step, memory, MFU/HFU agree to 1e-9."""
    model = load_model(name)
    cluster = COLOSSUS.with_gpus(16384)
    degrees = enumerate_degrees(model, H100, cluster, 16384, [batch], model.seq_len)
    pick = np.random.default_rng(seed).choice(len(degrees["tp"]), size=40)
    cand = ArrayLayout(**{k: v[pick] for k, v in degrees.items()}, sharding=sharding,
                       recompute=recompute, precision=precision, grad_reduce=grad)  # fmt: skip
    vec = _parts(estimate_step(model, cand, H100, cluster, check=False))
    vec = {k: np.broadcast_to(v, (len(cand),)) for k, v in vec.items()}
    vec["stage"] = stage_total_s(model, cand, H100)  # the search's bound, same numbers
    for i in range(len(cand)):
        one = _parts(estimate_step(model, cand.layout(i), H100, cluster))
        one["stage"] = stage_pass_times(model, cand.layout(i), H100).total_s
        for key, value in one.items():
            assert vec[key][i] == pytest.approx(value, rel=1e-9, abs=1e-15), (key, i)


def test_calculon_winner_is_in_the_space_and_the_pick_is_at_least_as_good():
    """Calculon's best GPT-3 175B layout on 4,096 A100 (tp8 pp4 vpp24 mb3, selective
    recompute) is a candidate, and the planner's pick trains at least as fast in its own
    model."""
    gpt3 = load_model("gpt3-175b")
    cluster = generic_cluster(A100, 4096)
    degrees = enumerate_degrees(gpt3, A100, cluster, 4096, [1536], gpt3.seq_len)
    row = dict(tp=8, pp=4, vpp=24, cp=1, ep=1, dp=128, micro_batch=3, global_batch=1536)
    hit = np.logical_and.reduce([degrees[k] == v for k, v in row.items()])
    assert hit.sum() == 1
    result = search_layouts(gpt3, A100, cluster, 4096, 1536, "bf16", top=1)
    assert result.evaluated >= 1_000_000
    calculon = min(
        estimate_step(gpt3, LayoutSpec(**row, recompute="selective", sharding=sh), A100,
                      cluster).step_s
        for sh in SHARDING
    )  # fmt: skip
    assert result.best[0].step_s <= calculon
    assert result.best[0].layout.global_batch == 1536  # the batch is the user's


def test_search_uses_fewer_gpus_when_the_batch_cannot_split_over_all():
    """Grok-1 on 100,000 H100 with 4,096 sequences: dp must divide the batch (a power of
    two) and 100,000 = 2^5·5^5, so the best layout leaves GPUs as hot spares and says so."""
    grok = load_model("grok-1")
    result = search_layouts(grok, H100, COLOSSUS, precision="bf16", top=3)
    best = result.best[0]
    assert best.gpus < 100_000 and result.spare_gpus == 100_000 - best.gpus
    assert (
        best.layout.global_batch == 4096 and 4096 % (best.layout.dp * best.layout.micro_batch) == 0
    )
    assert result.best_all_gpus is None
    days = [6e12 / e.tokens_per_s for e in result.best]
    assert days[0] <= min(days) * 1.01  # ranked by time to train (1% tie → fewer GPUs)
    llama = load_model("llama3-8b")
    fixed = search_layouts(llama, H100, COLOSSUS, 1000, 1000, "bf16", top=1)
    assert fixed.best[0].layout.global_batch == 1000
    wide = search_layouts(llama, H100, COLOSSUS, 1000, 1000, "bf16", top=1,
                          batch_range=(1000, 1100))  # fmt: skip
    assert wide.best[0].layout.global_batch in smooth_batches(1000, 1100)
    per_token = [r.best[0].step_s / r.best[0].layout.global_batch for r in (fixed, wide)]
    assert per_token[1] <= per_token[0]  # a wider space never trains slower


def test_smooth_batches_and_bad_search_arguments():
    assert smooth_batches(4096, 4700) == [4096, 4320, 4374, 4500, 4608]
    with pytest.raises(LayoutError, match="LO <= HI"):
        search_layouts(load_model("llama3-8b"), H100, COLOSSUS, 64, batch_range=(9, 3))
    with pytest.raises(LayoutError, match="top"):
        search_layouts(load_model("llama3-8b"), H100, COLOSSUS, 64, top=0)


def test_uneven_pipeline_stages_follow_megatron_core():
    """126 layers on 16 stages: 14 middle stages of 8 and 7 + 7 at the ends (Llama 3 405B);
    layers not splitting over the middle stages are refused with the reason."""
    assert uneven_stages(126, 16) == (7, 7)
    assert uneven_stages(126, 16, vpp=2) == (6, 8)
    assert uneven_stages(128, 16) is None
    llama = load_model("llama3-405b")
    lay = LayoutSpec(tp=8, pp=16, dp=128, global_batch=2048, first_stage_layers=7,
                     last_stage_layers=7)  # fmt: skip
    lay.check(llama, 16384)
    assert lay.stage_layers(126) == (7, 8, 7)
    with pytest.raises(LayoutError, match="split evenly"):
        lay.replace(first_stage_layers=10).check(llama, 16384)
    with pytest.raises(LayoutError, match="multiple of vpp"):
        lay.replace(vpp=2).check(llama, 16384)
    with pytest.raises(LayoutError, match="uneven"):
        lay.replace(first_stage_layers=0, last_stage_layers=0).check(llama, 16384)
    # the slowest stage: 8 middle layers, or the last stage's 7 plus the head
    one = layer_pass_times(llama, lay, H100)
    per_layer = sum(one.forward.values()) + sum(one.backward.values())
    head = sum(one.head_forward.values()) + sum(one.head_backward.values())
    passes = stage_pass_times(llama, lay, H100)
    assert passes.total_s == pytest.approx(max(8 * per_layer, 7 * per_layer + head))
    # memory: the first stage holds 7 layers' parameters, not 126/16
    assert params_per_gpu(llama, lay).dense < params_per_gpu(llama, lay.replace(
        first_stage_layers=0, last_stage_layers=0, pp=14, dp=146)).dense  # fmt: skip


def test_llama3_405b_on_pp16_is_accepted_and_completed():
    out = CliRunner().invoke(
        app, ["plan", "--model", "llama3-405b", "--gpus", "16384", "--tp", "8", "--pp", "16",
              "--global-batch", "2048", "--json"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    layout = data["plan"]["layout"]  # vpp left blank: searched, the stages follow it
    first, last = layout["first_stage_layers"], layout["last_stage_layers"]
    assert (first, last) == uneven_stages(126, 16, layout["vpp"])
    assert (first, last) == (7, 7) or layout["vpp"] > 1
    assert any("uneven stages" in n for n in data["notes"])


def test_ring_reduce_scatter_latency_is_n_minus_1_hops():
    """NCCL tuning.cc: reduce-scatter/all-gather rings take nRanks−1 steps; the all-reduce
    tree 2·log2 n. A zero-byte collective is pure latency."""
    net = comms.links(H100, COLOSSUS)
    nv, fab = comms.NVLINK_LATENCY_S, comms.FABRIC_LATENCY_S
    assert comms.group_collective_s("allgather", 0.0, 8, 1, net) == pytest.approx(7 * nv)
    assert comms.group_collective_s("allreduce", 0.0, 8, 1, net) == pytest.approx(6 * nv)
    # 64 ranks: 8 per NVLink domain (7 hops), then 8 domains over the fabric (7 hops)
    assert comms.group_collective_s("allgather", 0.0, 64, 1, net) == pytest.approx(7 * nv + 7 * fab)
    assert comms.group_collective_s("allgather", 0.0, 1, 1, net) == 0.0


def test_dp_bucket_grows_with_dp_size():
    """Megatron-Core's bucket = max(40M, 1M·dp) parameters. Llama 3 70B, tp8 pp4, zero1,
    mb4 selective: the reduce-scatter hides behind the backward but the last bucket, so the
    exposed share is bucket / parameters per GPU: 128M/2.27G at dp=128 (3.2× the old
    fixed 40M), 40M/2.27G at dp=16."""
    llama = load_model("llama3-70b")
    assert dp_bucket_params(16) == 40e6 and dp_bucket_params(128) == 128e6
    for dp in (16, 128):
        lay = LayoutSpec(tp=8, pp=4, dp=dp, micro_batch=4, global_batch=dp * 32,
                         recompute="selective")  # fmt: skip
        est = estimate_step(llama, lay, H100, COLOSSUS)
        share = est.time.dp_exposed_s / est.time.dp_raw_s
        assert share == pytest.approx(dp_bucket_params(dp) / params_per_gpu(llama, lay).total)
    assert share == pytest.approx(128e6 / 2.2704e9, rel=1e-3)


def test_dp_overlap_window_includes_recompute_under_full_recompute():
    """No sharding (one all-reduce), full recompute, mb1: the all-reduce (0.380 s) is longer
    than the last micro-batch's backward (0.145 s) plus its recomputed forward (0.067 s), so
    0.168 s stays exposed; without the recompute in the window it would be 0.235 s."""
    llama = load_model("llama3-70b")
    lay = LayoutSpec(tp=8, pp=4, dp=128, global_batch=1024, recompute="full", sharding="none")
    est = estimate_step(llama, lay, H100, COLOSSUS)
    passes = stage_pass_times(llama, lay, H100)
    raw = est.time.dp_raw_s
    assert est.time.dp_exposed_s == pytest.approx(raw - passes.backward_s - passes.recompute_s)
    assert est.time.dp_exposed_s == pytest.approx(0.168, abs=0.002)
    assert raw - passes.backward_s - est.time.dp_exposed_s == pytest.approx(passes.recompute_s)


@st.composite
def _specs(draw):
    """A random model (a catalog one with other widths, depth and sequence length), a random
    accelerator calibration (kernel efficiencies anywhere up to 1), and a random layout of
    its search space."""
    model = load_model(draw(st.sampled_from(MODELS)))
    layers = draw(st.sampled_from([4, 8, 12]))
    model = model.replace(
        layers=layers,
        seq_len=draw(st.sampled_from([512, 4096, 32768, 131072])),
        dense_layers=min(model.dense_layers, layers - 1),
    )
    eff = {
        k: draw(st.floats(0.05, 1.0))
        for k in ("matmul", "matmul_fp8", "attention", "memory", "grouped_matmul", "nvlink")
    }
    hw = dataclasses.replace(H100, efficiency=eff)
    degrees = enumerate_degrees(model, hw, COLOSSUS, 4096, [draw(st.sampled_from([64, 512]))],
                                model.seq_len)  # fmt: skip
    i = draw(st.integers(0, len(degrees["tp"]) - 1))
    cand = ArrayLayout(**{k: v[[i]] for k, v in degrees.items()},
                       sharding=draw(st.sampled_from(SHARDING)),
                       recompute=draw(st.sampled_from(RECOMPUTE)),
                       precision=draw(st.sampled_from(["bf16", "fp8"])))  # fmt: skip
    return model, hw, cand.layout(0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=_specs(), causal=st.booleans())
def test_no_prediction_above_physical_limits(spec, causal):
    """MFU ≤ HFU ≤ 1, every kernel at or above its roofline (FLOPs at peak, bytes at HBM
    bandwidth), every collective at or above its line-rate bandwidth term."""
    model, hw, lay = spec
    est = estimate_step(model, lay, hw, COLOSSUS, causal_flops=causal)
    assert est.mfu <= 1.0 + 1e-12 and est.hfu <= 1.0 + 1e-12
    assert all(v >= 0 for v in est.time.parts().values())
    tokens = lay.micro_batch * model.seq_len / lay.cp
    bw = hw.memory_bw_tbs * 1e12
    ops = head_ops(model, lay, tokens)
    for moe in {False, model.is_moe}:
        ops += layer_ops(model, lay, tokens, moe, False)
    for op in ops:
        peak = hw.peak(op.precision if op.kind != "attention" else "bf16") * 1e12
        floor = max(op.total_flops / peak, op.bytes * op.calls / bw)
        assert op_time_s(op, hw) >= floor * (1 - 1e-12)
    net = comms.links(hw, COLOSSUS)
    line = comms.Links(hw.nvlink_gbs * 1e9, hw.nic_gbps / 8 * 1e9, net.nvlink_domain,
                       net.gpus_per_node)  # fmt: skip
    nbytes = params_per_gpu(model, lay).dense * 4.0
    for kind in ("allgather", "allreduce", "alltoall"):
        at_line_rate = comms.group_collective_s(kind, nbytes, lay.dp * lay.cp, lay.tp, line)
        assert comms.group_collective_s(kind, nbytes, lay.dp * lay.cp, lay.tp, net) >= (
            at_line_rate * (1 - 1e-12)
        )


def test_roofline_floor_and_efficiency_cap():
    """1 PFLOP on a 989.5-TFLOP/s GPU takes at least 1.0106 s; a calibration above peak is
    refused, and every GEMM kind and precision reads the one matmul fraction (≤ 1)."""
    assert roofline_s(1e15, 989.5) == pytest.approx(1.0106, abs=1e-4)
    with pytest.raises(SpecError, match="fraction of peak"):
        dataclasses.replace(H100, efficiency={"matmul": 1.35})
    hw = dataclasses.replace(H100, efficiency={"matmul": 0.9})
    assert efficiency(hw, "grouped_matmul", "fp8") == efficiency(hw, "matmul", "bf16") == 0.9


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--batch-range", "9:3"], "LO <= HI"),
        (["--batch-range", "abc"], "LO:HI"),
        (["--grad-reduce", "fp64"], "fp64"),
        (["--precision", "fp4"], "fp4"),
    ],
)
def test_plan_search_options_refuse_bad_values(args, match, capsys):
    assert match in _cli_error(["plan", "--model", "llama3-8b", "--gpus", "64", *args], capsys)


def _cli_error(argv, capsys):
    """Run the console entry point; it must exit 2 with one line saying what is wrong."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    return captured.out + captured.err


def test_plan_search_options_change_the_plan(capsys):
    """--precision fixes the searched precision; --batch-range lets the batch move (and the
    change is said); --grad-reduce and the stage options reach the layout."""
    runner = CliRunner()
    base = ["plan", "--model", "llama3-8b", "--gpus", "512", "--global-batch", "1000", "--json"]
    out = json.loads(runner.invoke(app, [*base, "--precision", "fp8"]).output)
    assert {e["layout"]["precision"] for e in out["search"]["best"]} == {"fp8"}
    out = json.loads(runner.invoke(app, [*base, "--batch-range", "1000:1100"]).output)
    if out["plan"]["layout"]["global_batch"] != 1000:
        assert any("global batch 1000 →" in n for n in out["notes"])
    one = ["plan", "--model", "llama3-70b", "--gpus", "1024", "--tp", "8", "--pp", "4",
           "--global-batch", "1024", "--json"]  # fmt: skip
    out = json.loads(runner.invoke(app, [*one, "--grad-reduce", "bf16"]).output)
    fp32 = json.loads(runner.invoke(app, [*one, "--grad-reduce", "fp32"]).output)
    assert out["plan"]["layout"]["grad_reduce"] == "bf16"
    assert out["plan"]["memory"]["gradients_bytes"] * 2 == pytest.approx(
        fp32["plan"]["memory"]["gradients_bytes"]
    )
    res = runner.invoke(app, [*one, "--first-stage-layers", "16", "--last-stage-layers", "16"])
    out = json.loads(res.output)
    assert out["plan"]["layout"]["first_stage_layers"] == 16
    assert "split evenly" in _cli_error([*one[:-1], "--first-stage-layers", "79"], capsys)


def _brute_force_best(model, cluster, batches, precisions):
    """The best (seconds per token, GPUs) of every layout timed in full, no bound: the
    search's ranking rule (fewest GPUs within ``TIME_TIE`` of the fastest) by hand."""
    scores = []
    for batch in batches:
        degrees = enumerate_degrees(model, H100, cluster, cluster.gpus, [batch], model.seq_len)
        for sharding, recompute, prec, grad in itertools.product(
            SHARDING, RECOMPUTE, precisions, ["fp32", "bf16"]
        ):
            cand = ArrayLayout(**degrees, sharding=sharding, recompute=recompute,
                               precision=prec, grad_reduce=grad)  # fmt: skip
            est = estimate_step(model, cand, H100, cluster, check=False)
            fits = np.asarray(est.memory.fits, dtype=bool)
            per_token = (est.step_s / (cand.global_batch * model.seq_len))[fits]
            scores += zip(per_token.tolist(), cand.gpus[fits].tolist(), strict=True)
    fastest = min(t for t, _ in scores)
    return min((g, t) for t, g in scores if t <= fastest * (1 + TIME_TIE))[::-1]


def test_batch_range_search_picks_the_brute_force_best():
    """Branch and bound (and the grouping by distinct layer shape) rule out no layout that
    could win: with the batch free in 96:128 and both precisions, the search's best equals
    the best of every layout of the space timed in full."""
    model, cluster = load_model("mixtral-8x7b"), COLOSSUS.with_gpus(256)
    res = search_layouts(model, H100, cluster, precision=None, batch_range=(96, 128))
    best = res.best[0]
    want_s, want_gpus = _brute_force_best(model, cluster, smooth_batches(96, 128), ["bf16", "fp8"])
    assert best.gpus == want_gpus
    assert best.step_s / (best.layout.global_batch * model.seq_len) == pytest.approx(want_s)
    assert res.bounded > 0  # the bound did prune


@pytest.mark.parametrize("high", [50, 10**9])  # table path, and the sort path for wide keys
def test_per_unique_groups_like_np_unique(high):
    """``per_unique``'s grouping (a table over the key range, or a sort when that range is
    wide) gives every candidate the group ``np.unique`` gives it, with one member each."""
    rng = np.random.default_rng(0)
    key = rng.integers(0, high, size=5000)
    key[:3] = high - 1  # the largest key present
    first, inverse = vec._group(key, high)
    uniq, want_inverse = np.unique(key, return_inverse=True)
    assert np.array_equal(key[first], uniq)
    assert np.array_equal(inverse, want_inverse.ravel())
    codes, count = vec._dense_codes(np.array([7, 3, 7, 100, 3]))
    assert codes.tolist() == [1, 0, 1, 2, 0] and count == 3
