"""Attention sinks (GPT-OSS): parameters, the fused/unfused kernel choice, and how the
published GPT-OSS rows are compared (in the source's own FLOP count)."""

import dataclasses

import pytest

from gigafactory.errors import SpecError
from gigafactory.plan.compute import attention_ops, software_for
from gigafactory.plan.params import total_params
from gigafactory.plan.runs import read_runs
from gigafactory.plan.step import estimate_step
from gigafactory.plan.validate import compare_run, generic_cluster, predict_run
from gigafactory.spec import LayoutSpec, load_hardware, load_model


def _gpt_oss_rows():
    return [r for r in read_runs() if r.model().attention_sinks]


def test_sinks_add_one_parameter_per_head_and_layer():
    base = load_model("gpt-oss-120b").replace(attention_sinks=False)
    sinks = base.replace(attention_sinks=True)
    assert total_params(sinks) - total_params(base) == base.layers * base.heads


def test_attention_sinks_must_be_a_bool():
    with pytest.raises(SpecError, match="attention_sinks"):
        load_model("gpt-oss-120b").replace(attention_sinks="yes")


def test_published_gpt_oss_rows_carry_sinks():
    rows = _gpt_oss_rows()
    assert {r.id for r in rows} == {"MBb4", "MBg4"}
    assert all(r.model().sliding_window == 128 for r in rows)


def test_unfused_sinks_materialise_the_full_square():
    model = load_model("gpt-oss-120b").replace(attention_sinks=True, seq_len=4096)
    layout = LayoutSpec(ep=8, dp=8, global_batch=8)
    sw = software_for("megatron-bridge-25.11")
    unfused = dataclasses.replace(sw, fused_sink_attention=False)
    fused_ops = {o.name: o for o in attention_ops(model, layout, 4096, True, sw)}
    unfused_ops = {o.name: o for o in attention_ops(model, layout, 4096, True, unfused)}
    assert "attention_scores" not in fused_ops and "attention_scores" in unfused_ops
    # the window is only skipped by the fused kernel: unfused multiplies all s×s scores
    ratio = unfused_ops["attention_core"].flops / fused_ops["attention_core"].flops
    assert ratio > 4096 / 128
    # without sinks the same software keeps the fused kernel
    plain = model.replace(attention_sinks=False)
    assert "attention_scores" not in {
        o.name for o in attention_ops(plain, layout, 4096, True, unfused)
    }


def test_unfused_sink_attention_is_slower_on_the_published_rows():
    for run in _gpt_oss_rows():
        hw = load_hardware(run.gpu)
        sw = software_for(run.row["framework"])
        args = (run.model(), run.layout(), hw, generic_cluster(hw, run.gpus))
        fused = estimate_step(*args, check=False, software=sw)
        unfused = estimate_step(
            *args, check=False, software=dataclasses.replace(sw, fused_sink_attention=False)
        )
        assert unfused.step_s > 1.5 * fused.step_s


def _megatron_bridge_2511_gpt_oss_flops(m) -> float:
    """Megatron-Bridge 25.11's count for GPT-OSS: 3/2 GLU factor only for SiLU (GPT-OSS gates
    with quick_gelu), every layer full causal attention, untied logits."""
    r = m.heads * m.dim_head / m.hidden
    attn = (1 + m.n_kv_heads / m.heads + m.seq_len / (2 * m.hidden)) * r
    mlp = m.moe_ffn / m.hidden * m.top_k
    return 12 * m.layers * m.hidden**2 * (attn + mlp) + 6 * m.hidden * m.vocab


def test_gpt_oss_rows_are_compared_in_the_sources_flop_count():
    for run in _gpt_oss_rows():
        tflops = run.published("tflops_per_gpu")
        tokens = run.published("tokens_per_s_per_gpu")
        counted = _megatron_bridge_2511_gpt_oss_flops(run.model())
        assert counted * tokens / 1e12 == pytest.approx(tflops, rel=0.005)
        row = compare_run(run)
        est = predict_run(run)
        assert row.predicted / row.published == pytest.approx(est.tokens_per_s_per_gpu / tokens)
