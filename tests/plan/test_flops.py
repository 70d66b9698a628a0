"""FLOP counts against hand-worked numbers and published formulas."""

import pytest

from gigafactory.plan import flops
from gigafactory.plan.params import active_params, embedding_params
from gigafactory.spec import ModelSpec, load_model


def _gpt(layers=24, hidden=2304, heads=24, vocab=51200, seq=2048) -> ModelSpec:
    return ModelSpec(
        name="gpt", layers=layers, hidden=hidden, heads=heads, vocab=vocab, seq_len=seq,
        mlp="gelu", tied_embeddings=True, position="learned",
    )  # fmt: skip


def test_matmul_is_2mnk():
    assert flops.matmul_flops(2, 3, 4) == 48


def test_narayanan_formula_hand_worked():
    # B=1, s=2048, l=1, h=1024, V=0: 96·2048·1024²·(1 + 2048/6144) = 96·2048·1048576·4/3
    assert flops.narayanan_gpt_flops_per_iteration(1, 2048, 1, 1024, 0) == pytest.approx(
        96 * 2048 * 1024**2 * 4 / 3
    )


@pytest.mark.parametrize(("layers", "hidden", "heads"), [(24, 2304, 24), (96, 12288, 96)])
def test_full_recompute_hardware_flops_equal_narayanan(layers, hidden, heads):
    m = _gpt(layers, hidden, heads)
    batch, s = 512, m.seq_len
    ours = flops.hardware_flops_per_token(m, "full") * batch * s
    theirs = flops.narayanan_gpt_flops_per_iteration(batch, s, layers, hidden, m.vocab)
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_model_flops_near_six_n_for_short_sequences():
    """Kaplan et al. 2020: ≈ 6·N per token when s ≪ h (N = active non-embedding + head)."""
    m = load_model("llama3-8b")
    n = active_params(m) - embedding_params(m) + m.vocab * m.hidden
    assert flops.training_flops_per_token(m, seq_len=16) == pytest.approx(6 * n, rel=1e-3)


def test_causal_halves_attention_core_and_nothing_else():
    m = load_model("llama3-70b")
    full = flops.forward_flops_breakdown(m, causal=False)
    half = flops.forward_flops_breakdown(m, causal=True)
    assert half.attention_core == pytest.approx(full.attention_core / 2)
    assert half.mlp == full.mlp and half.head == full.head
    # hand-worked: 80 layers · 4·s·a·d = 80·4·8192·8192
    assert full.attention_core == pytest.approx(80 * 4 * 8192 * 64 * 128)


def test_megatron_bridge_llama3_formula():
    """NeMo/Megatron-Bridge llama3_flops: gbs·s·L·h²·(12 + 12k/a + 18f/h + 6s/h + 6V/(Lh))."""
    m = load_model("llama3-70b")
    s, h, L = 8192, m.hidden, m.layers
    bridge = s * L * h * h * (
        12 + 12 * m.n_kv_heads / m.heads + 18 * m.ffn_width / h + 12 * s / h * 0.5
        + 6 * m.vocab / (L * h)
    )  # fmt: skip
    assert flops.training_flops_per_token(m, s, causal=True) * s == pytest.approx(bridge)


def test_moe_counts_topk_and_shared_and_router():
    g = load_model("grok-1")
    b = flops.forward_flops_breakdown(g)
    # 64 layers · 2 experts · 3 matrices · 2·6144·32768
    assert b.moe_experts == pytest.approx(64 * 2 * 3 * 2 * 6144 * 32768)
    assert b.router == pytest.approx(64 * 2 * 6144 * 8)
    assert b.mlp == 0
    d = load_model("deepseek-v3")
    bd = flops.forward_flops_breakdown(d)
    assert bd.moe_experts == pytest.approx(58 * 9 * 3 * 2 * 7168 * 2048)
    assert bd.mlp == pytest.approx(3 * 3 * 2 * 7168 * 18432)


def test_sliding_window_counts_window_tokens():
    m = load_model("gpt-oss-120b")
    s = 4096
    b = flops.forward_flops_breakdown(m, s)
    per_key = 2 * m.heads * (m.dim_head + m.dim_head)  # QKᵀ + PV per key per token
    assert b.attention_core == pytest.approx(per_key * (18 * s + 18 * 128))
    assert flops.attention_span(s, 128, causal=True) == pytest.approx(128 - 128**2 / (2 * s))
    assert flops.attention_span(s, s, causal=True) == pytest.approx(s / 2)


def test_selective_recompute_adds_attention_core_only():
    m = load_model("llama3-8b")
    extra = flops.recompute_flops_per_token(m, "selective")
    assert extra == pytest.approx(flops.forward_flops_breakdown(m).attention_core)
    assert flops.recompute_flops_per_token(m, "none") == 0
