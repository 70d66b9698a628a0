"""Matmul FLOPs of a transformer, per token and per step.

Convention. A matmul of an (m×k) by a (k×n) matrix costs 2·m·n·k FLOPs. We count every
projection (Q, K, V, O or MLA's low-rank ones), the attention score (QKᵀ) and value (PV)
matmuls, the MLP or the MoE experts a token actually uses (top-k routed plus shared), the
router and the output head. Norms, activations, softmax, RoPE and biases are not matmuls and
are not counted (they are < 1% of the FLOPs and are modelled as memory-bound time in
``compute.py``). Embedding lookups are gathers, not matmuls.

Attention span. Each query multiplies against ``span`` keys:

* ``causal=False`` (default) counts the full s×s product, as PyTorch's
  ``torch.utils.flop_counter.FlopCounterMode`` does for SDPA, as Megatron-LM's
  ``num_floating_point_operations`` (2021–2024; Narayanan et al. SC21 appendix) does, and as
  PaLM's MFU definition (Chowdhery et al. 2022, App. B: 6N + 12·L·H·Q·T) does. The published
  Megatron-LM rows (Narayanan 2021 Table 1, the Megatron-LM README H100 table) use it.
* ``causal=True`` counts only the lower triangle (s/2 keys per query on average), as
  NeMo 2 / Megatron-Bridge's flops calculators do (``causal_self_attn = True`` →
  ``12·s/h · 0.5`` in ``llama3_flops``); the Megatron-Bridge performance-summary rows use it.

Sliding-window layers (``model.sliding_window`` > 0, every ``sliding_window_every``-th layer)
attend to at most ``w`` keys: ``min(w, s)`` keys per query when ``causal=False`` (window
tokens, the count a banded kernel does), ``w − w²/(2s)`` on average when ``causal=True`` (the
exact triangle-clipped band; equals s/2 when w = s).

Symbols follow Korthikanti et al. 2022: h hidden, a heads, d head dim, k KV heads, s sequence,
V vocab, L layers.
"""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.spec.model import ModelSpec


def matmul_flops(m: float, n: float, k: float) -> float:
    """FLOPs of an (m×k)·(k×n) matmul: 2·m·n·k (one multiply and one add per term)."""
    return 2.0 * m * n * k


def attention_span(seq_len: int, window: int = 0, causal: bool = False) -> float:
    """Average number of keys each query is multiplied with.

    Full attention: s (``causal=False``) or s/2 (``causal=True``, Megatron-Bridge convention).
    Sliding window w: min(w, s), or with causal clipping w − w²/(2s) (= s/2 at w = s).
    """
    w = min(window, seq_len) if window else seq_len
    if not causal:
        return float(w)
    return w - w * w / (2.0 * seq_len)


def attention_projection_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of one layer's attention projections.

    GQA (Ainslie et al. 2023): Q and O are h×(a·d), K and V are h×(k·d) each →
    2h(2ad + 2kd). MLA (DeepSeek-V2 Sec. 2.1): W_DQ h×r_q, W_UQ r_q×a(d_nope+d_rope)
    (or W_Q h×a(d_nope+d_rope) without q-LoRA), W_DKV h×(r_kv+d_rope),
    W_UKV r_kv×a(d_nope+d_v), W_O a·d_v×h.
    """
    h, a = model.hidden, model.heads
    if model.attention == "mla":
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        if model.q_lora_rank:
            q = matmul_flops(1, model.q_lora_rank, h) + matmul_flops(1, a * qk, model.q_lora_rank)
        else:
            q = matmul_flops(1, a * qk, h)
        kv_down = matmul_flops(1, model.kv_lora_rank + model.qk_rope_head_dim, h)
        kv_up = matmul_flops(1, a * (model.qk_nope_head_dim + model.v_head_dim), model.kv_lora_rank)
        o = matmul_flops(1, h, a * model.v_head_dim)
        return q + kv_down + kv_up + o
    d, k = model.dim_head, model.n_kv_heads
    return matmul_flops(1, a * d + 2 * k * d, h) + matmul_flops(1, h, a * d)


def attention_head_dims(model: ModelSpec) -> tuple[int, int]:
    """(query/key dim, value dim) per head: (d, d) for GQA; (d_nope + d_rope, d_v) for MLA."""
    if model.attention == "mla":
        return model.qk_nope_head_dim + model.qk_rope_head_dim, model.v_head_dim
    return model.dim_head, model.dim_head


def attention_core_flops(model: ModelSpec, span: float) -> float:
    """Forward FLOPs per token of QKᵀ and PV for one layer: 2·a·span·(d_qk + d_v).

    With d_qk = d_v = d and span = s this is Korthikanti/Narayanan's 4·s·h per token (a·d = h).
    """
    d_qk, d_v = attention_head_dims(model)
    return matmul_flops(1, span, model.heads * d_qk) + matmul_flops(1, model.heads * d_v, span)


def mlp_flops(model: ModelSpec, width: int) -> float:
    """Forward FLOPs per token of one FFN of ``width``: 2·h·f per matrix (3 gated, 2 plain)."""
    return model.mlp_matrices * matmul_flops(1, width, model.hidden)


def router_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of the router, a bias-free h → E linear: 2·h·E."""
    return matmul_flops(1, model.experts, model.hidden)


def moe_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of one MoE block: (top_k + shared) experts plus the router."""
    experts = (model.top_k + model.shared_experts) * mlp_flops(model, model.moe_ffn)
    return experts + router_flops(model)


def head_flops(model: ModelSpec) -> float:
    """Forward FLOPs per token of the output head h → V: 2·h·V (tied or not)."""
    return matmul_flops(1, model.vocab, model.hidden)


@dataclass(frozen=True)
class FlopsBreakdown:
    """Forward matmul FLOPs per token of the whole model, by part."""

    attention_projections: float
    attention_core: float
    mlp: float
    moe_experts: float
    router: float
    head: float

    @property
    def total(self) -> float:
        return (
            self.attention_projections
            + self.attention_core
            + self.mlp
            + self.moe_experts
            + self.router
            + self.head
        )


def forward_flops_breakdown(
    model: ModelSpec, seq_len: int | None = None, *, causal: bool = False
) -> FlopsBreakdown:
    """Per-token forward FLOPs by part, summed over all layers (see the module docstring)."""
    s = seq_len or model.seq_len
    local = model.local_attention_layers
    full_span = attention_span(s, 0, causal)
    local_span = attention_span(s, model.sliding_window, causal)
    core = (model.layers - local) * attention_core_flops(model, full_span)
    core += local * attention_core_flops(model, local_span)
    experts = model.moe_layers * (model.top_k + model.shared_experts)
    return FlopsBreakdown(
        attention_projections=model.layers * attention_projection_flops(model),
        attention_core=core,
        mlp=model.n_dense_layers * mlp_flops(model, model.ffn_width),
        moe_experts=experts * mlp_flops(model, model.moe_ffn) if model.is_moe else 0.0,
        router=model.moe_layers * router_flops(model),
        head=head_flops(model),
    )


def forward_flops_per_token(
    model: ModelSpec, seq_len: int | None = None, *, causal: bool = False
) -> float:
    """Forward matmul FLOPs per token (model FLOPs). ``causal=False`` matches PyTorch's
    FlopCounterMode and Megatron-LM; ``causal=True`` matches NeMo/Megatron-Bridge."""
    return forward_flops_breakdown(model, seq_len, causal=causal).total


def training_flops_per_token(
    model: ModelSpec, seq_len: int | None = None, *, causal: bool = False
) -> float:
    """Model FLOPs per token of one training step: 3 × forward (backward = 2 × forward: the
    gradients with respect to activations and to weights; Narayanan et al. 2021 App.)."""
    return 3.0 * forward_flops_per_token(model, seq_len, causal=causal)


def recompute_flops_per_token(
    model: ModelSpec, recompute: str, seq_len: int | None = None, *, causal: bool = False
) -> float:
    """Extra forward FLOPs per token that activation recomputation spends.

    ``full``: one more forward of every transformer layer (not the head; Narayanan et al.
    2021: 4 passes instead of 3). ``selective``: the attention core only (QKᵀ, softmax, PV;
    Korthikanti et al. 2022 Sec. 5). ``none``: zero.
    """
    if recompute == "none":
        return 0.0
    b = forward_flops_breakdown(model, seq_len, causal=causal)
    if recompute == "selective":
        return b.attention_core
    return b.total - b.head


def hardware_flops_per_token(
    model: ModelSpec, recompute: str, seq_len: int | None = None, *, causal: bool = False
) -> float:
    """FLOPs the hardware executes per token: model FLOPs plus recomputation (for HFU)."""
    return training_flops_per_token(model, seq_len, causal=causal) + recompute_flops_per_token(
        model, recompute, seq_len, causal=causal
    )


def narayanan_gpt_flops_per_iteration(
    batch: int, seq_len: int, layers: int, hidden: int, vocab: int
) -> float:
    """Narayanan et al. SC21, Eq. (3): 96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)).

    FLOPs per iteration of a GPT (MHA, FFN 4h, no gating) with full activation
    recomputation (4 forward-equivalents through the layers, 3 through the head).
    """
    return (
        96.0
        * batch
        * seq_len
        * layers
        * hidden**2
        * (1 + seq_len / (6.0 * hidden) + vocab / (16.0 * layers * hidden))
    )
