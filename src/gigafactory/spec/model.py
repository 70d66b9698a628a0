"""ModelSpec: the shape and architecture of a transformer, read by planner and trainer alike."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from gigafactory.errors import SpecError
from gigafactory.spec._fields import from_dict, one_of, positive_float, positive_int

MLP_KINDS = ("gelu", "swiglu", "geglu", "relu2")
NORM_KINDS = ("rmsnorm", "layernorm")
NORM_LAYOUTS = ("pre", "sandwich")
ATTENTION_KINDS = ("gqa", "mla")
POSITION_KINDS = ("rope", "learned", "alibi")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer, dense or mixture-of-experts.

    Symbols as in Korthikanti et al. 2022: L = ``layers``, h = ``hidden``, a = ``heads``,
    V = ``vocab``, s = ``seq_len``. ``ffn`` is the dense FFN width; MoE layers use ``experts``
    routed experts of width ``moe_ffn`` (``top_k`` per token) plus ``shared_experts`` always-on
    experts of the same width. The first ``dense_layers`` layers of an MoE model are dense.
    """

    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int
    kv_heads: int = 0  # 0 = same as heads (MHA)
    head_dim: int = 0  # 0 = hidden // heads
    ffn: int = 0  # dense FFN width; 0 = 4 * hidden
    mlp: str = "swiglu"
    # mixture of experts
    experts: int = 0
    top_k: int = 0
    moe_ffn: int = 0
    shared_experts: int = 0
    dense_layers: int = 0
    moe_renormalize: bool = True  # renormalise the top-k gates to sum to 1 (Grok-1: no)
    router_aux_loss_coef: float = 0.01
    # attention
    attention: str = "gqa"
    q_lora_rank: int = 0  # MLA (DeepSeek-V2/V3) low-rank query; 0 = full-rank query
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    sliding_window: int = 0  # tokens; 0 = full causal attention everywhere
    sliding_window_every: int = 2  # every n-th layer (starting with the first) is local
    attn_logit_softcap: float = 0.0  # 0 = none; Grok-1: 30 (30 * tanh(x / 30))
    # a learned logit per head joins every softmax row as an extra "sink" column that takes
    # probability mass but no value (GPT-OSS model card, 2025; Xiao et al. 2024)
    attention_sinks: bool = False
    # positions, norms, biases
    position: str = "rope"
    rope_theta: float = 10_000.0
    norm: str = "rmsnorm"
    norm_layout: str = "pre"  # "sandwich": norm before and after each sub-block (Grok-1)
    norm_eps: float = 1e-5
    bias: bool = False
    tied_embeddings: bool = False
    # multipliers (Grok-1: embeddings * sqrt(h) = 78.38, output logits * 0.5774)
    embedding_multiplier: float = 1.0
    output_multiplier: float = 1.0
    tokenizer: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        s = "model"
        if not self.name:
            raise SpecError(s, "name", "must not be empty")
        for f in ("layers", "hidden", "heads", "vocab", "seq_len"):
            positive_int(s, f, getattr(self, f))
        for f in ("kv_heads", "head_dim", "ffn", "experts", "top_k", "moe_ffn"):
            positive_int(s, f, getattr(self, f), minimum=0)
        for f in ("shared_experts", "dense_layers", "sliding_window"):
            positive_int(s, f, getattr(self, f), minimum=0)
        positive_int(s, "sliding_window_every", self.sliding_window_every)
        for f in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim"):
            positive_int(s, f, getattr(self, f), minimum=0)
        positive_int(s, "v_head_dim", self.v_head_dim, minimum=0)
        one_of(s, "mlp", self.mlp, MLP_KINDS)
        one_of(s, "norm", self.norm, NORM_KINDS)
        one_of(s, "norm_layout", self.norm_layout, NORM_LAYOUTS)
        one_of(s, "attention", self.attention, ATTENTION_KINDS)
        one_of(s, "position", self.position, POSITION_KINDS)
        positive_float(s, "rope_theta", self.rope_theta)
        positive_float(s, "norm_eps", self.norm_eps)
        positive_float(s, "attn_logit_softcap", self.attn_logit_softcap, allow_zero=True)
        if not isinstance(self.attention_sinks, bool):
            raise SpecError(
                s, "attention_sinks", f"must be true or false, got {self.attention_sinks!r}"
            )
        positive_float(s, "embedding_multiplier", self.embedding_multiplier)
        positive_float(s, "output_multiplier", self.output_multiplier)
        positive_float(s, "router_aux_loss_coef", self.router_aux_loss_coef, allow_zero=True)
        if self.kv_heads and self.heads % self.kv_heads:
            raise SpecError(
                s, "kv_heads", f"{self.kv_heads} must divide heads={self.heads} (GQA groups)"
            )
        if not self.head_dim and self.hidden % self.heads:
            raise SpecError(
                s,
                "head_dim",
                f"hidden={self.hidden} is not divisible by heads={self.heads}; "
                "set head_dim explicitly",
            )
        if self.experts:
            if not 1 <= self.top_k <= self.experts:
                raise SpecError(
                    s, "top_k", f"must be between 1 and experts={self.experts}, got {self.top_k}"
                )
            if not self.moe_ffn:
                raise SpecError(s, "moe_ffn", "an MoE model needs the width of one expert")
            if self.dense_layers >= self.layers:
                raise SpecError(
                    s, "dense_layers", f"must be below layers={self.layers} for an MoE model"
                )
        elif self.top_k or self.shared_experts:
            raise SpecError(s, "experts", "top_k/shared_experts are set but experts is 0")
        if self.attention == "mla":
            for f in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if not getattr(self, f):
                    raise SpecError(s, f, "is required for MLA attention")
        if self.position == "rope" and self.attention == "gqa" and self.dim_head % 2:
            raise SpecError(s, "head_dim", f"RoPE needs an even head_dim, got {self.dim_head}")

    # --- derived shape -------------------------------------------------------------------

    @property
    def n_kv_heads(self) -> int:
        return self.kv_heads or self.heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden // self.heads

    @property
    def ffn_width(self) -> int:
        return self.ffn or 4 * self.hidden

    @property
    def gated(self) -> bool:
        """SwiGLU/GeGLU use three matrices (gate, up, down); GELU/ReLU² use two."""
        return self.mlp in ("swiglu", "geglu")

    @property
    def mlp_matrices(self) -> int:
        return 3 if self.gated else 2

    @property
    def is_moe(self) -> bool:
        return self.experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        """Whether block ``layer`` (from 0) has an MoE feed-forward: every block after the
        first ``dense_layers`` of an MoE model."""
        return self.is_moe and layer >= self.dense_layers

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers if self.is_moe else 0

    @property
    def n_dense_layers(self) -> int:
        return self.layers - self.moe_layers

    @property
    def local_attention_layers(self) -> int:
        """Layers that use a sliding window (every ``sliding_window_every``-th, from layer 0)."""
        if not self.sliding_window:
            return 0
        return math.ceil(self.layers / self.sliding_window_every)

    # --- plumbing ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return from_dict(cls, data, "model")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)
