"""Parameter counts from a ModelSpec.

The trainer's ``torch.nn.Module`` built from the same spec must have exactly
``total_params(spec)`` parameters (a test holds the two together).
"""

from __future__ import annotations

from gigafactory.spec.model import ModelSpec


def norm_params(model: ModelSpec) -> int:
    """One normalisation layer: a scale (RMSNorm), plus a shift (LayerNorm)."""
    return model.hidden * (2 if model.norm == "layernorm" else 1)


def attention_params(model: ModelSpec) -> int:
    """Projections of one attention block.

    GQA (Ainslie et al. 2023): Q and O are h·a·d, K and V are h·k·d for k KV heads.
    MLA (DeepSeek-V2 Sec. 2.1): a low-rank query (W_DQ, norm, W_UQ), a joint compressed KV
    (W_DKV with the decoupled RoPE key, norm, W_UK|W_UV) and W_O.
    Attention sinks (GPT-OSS model card, 2025) add one learned logit per head.
    """
    h, a = model.hidden, model.heads
    sinks = a if model.attention_sinks else 0
    if model.attention == "mla":
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        if model.q_lora_rank:
            q = h * model.q_lora_rank + model.q_lora_rank + model.q_lora_rank * a * qk
        else:
            q = h * a * qk
        kv = (
            h * (model.kv_lora_rank + model.qk_rope_head_dim)
            + model.kv_lora_rank
            + model.kv_lora_rank * a * (model.qk_nope_head_dim + model.v_head_dim)
        )
        o = a * model.v_head_dim * h
        return q + kv + o + sinks
    d, k = model.dim_head, model.n_kv_heads
    weights = 2 * h * a * d + 2 * h * k * d
    bias = (a * d + 2 * k * d + h) if model.bias else 0
    return weights + bias + sinks


def mlp_params(model: ModelSpec, width: int) -> int:
    """One FFN (or one expert) of ``width``: 3 matrices if gated (SwiGLU/GeGLU), else 2."""
    weights = model.mlp_matrices * model.hidden * width
    bias = (width * (model.mlp_matrices - 1) + model.hidden) if model.bias else 0
    return weights + bias


def router_params(model: ModelSpec) -> int:
    """The router: a bias-free linear h → E."""
    return model.hidden * model.experts


def layer_norms(model: ModelSpec) -> int:
    """Norms in one layer: 2 with pre-norm, 4 with Grok-1's sandwich layout."""
    return (4 if model.norm_layout == "sandwich" else 2) * norm_params(model)


def dense_layer_params(model: ModelSpec) -> int:
    return attention_params(model) + mlp_params(model, model.ffn_width) + layer_norms(model)


def moe_layer_params(model: ModelSpec, active: bool = False) -> int:
    """One MoE layer; with ``active`` only the top-k routed experts (plus shared) count."""
    routed = model.top_k if active else model.experts
    experts = (routed + model.shared_experts) * mlp_params(model, model.moe_ffn)
    return attention_params(model) + router_params(model) + experts + layer_norms(model)


def embedding_params(model: ModelSpec) -> int:
    """Token embedding, untied output head, learned positions and the final norm."""
    total = model.vocab * model.hidden
    if not model.tied_embeddings:
        total += model.vocab * model.hidden
    if model.position == "learned":
        total += model.seq_len * model.hidden
    return total + norm_params(model)


def total_params(model: ModelSpec) -> int:
    """Every parameter of the model."""
    return (
        model.n_dense_layers * dense_layer_params(model)
        + model.moe_layers * moe_layer_params(model)
        + embedding_params(model)
    )


def active_params(model: ModelSpec) -> int:
    """Parameters touched by one token (MoE: top-k routed plus shared experts)."""
    return (
        model.n_dense_layers * dense_layer_params(model)
        + model.moe_layers * moe_layer_params(model, active=True)
        + embedding_params(model)
    )
