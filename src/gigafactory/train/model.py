"""A Grok-architecture decoder built from a ``ModelSpec``, in the spirit of nanoGPT's model.py.

Every block reads top to bottom; shapes are in the comments (B batch, T time, C hidden,
H query heads, K key/value heads, D head dim, E experts, N = B·T tokens). The module knows
nothing of parallelism (``parallelize.py`` applies tensor, expert and pipeline parallelism,
FSDP2 and compile; under tensor parallelism a rank computes H/tp heads, so views say -1) nor
of the loop.

Grok-1 traits (xai-org/grok-1 model.py) switched on by the spec: sandwich RMSNorm
(``norm_layout: sandwich``), GeGLU experts, a top-k router in fp32 with the softmax over all
experts and no renormalisation (``moe_renormalize: false``), attention logits soft-capped as
``cap·tanh(x/cap)``, input embeddings and output logits scaled by fixed multipliers, tied
input/output embeddings.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from gigafactory.spec.model import ModelSpec
from gigafactory.train.errors import UnsupportedModelError

INIT_STD = 0.02  # GPT-2 / nanoGPT initialisation


def check_trainable(spec: ModelSpec) -> None:
    """Refuse, with the reason, an architecture this trainer does not build."""
    if spec.attention == "mla":
        raise UnsupportedModelError(
            f"{spec.name}: MLA is planned-only (the planner counts it, the trainer does not "
            "build it yet); train a GQA model such as grok-mini or llama3-8b"
        )
    if spec.position == "alibi":
        raise UnsupportedModelError(
            f"{spec.name}: ALiBi positions are planned-only; set position: rope or learned"
        )


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, V), multiplied by spec.output_multiplier
    loss: torch.Tensor | None  # mean next-token cross-entropy (None without targets)
    aux_loss: torch.Tensor  # MoE load-balancing loss, already scaled by its coefficient


# --- building blocks -----------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32 (Zhang & Sennrich 2019; Grok-1 does it in fp32)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


def make_norm(spec: ModelSpec) -> nn.Module:
    if spec.norm == "layernorm":
        return nn.LayerNorm(spec.hidden, eps=spec.norm_eps)  # weight and bias: 2h parameters
    return RMSNorm(spec.hidden, spec.norm_eps)


def rope_tables(seq_len: int, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of RoPE angles t·θ^(-2i/d) (Su et al. 2021), each (T, D), halves repeated."""
    inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (D/2,)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, heads, T, D) by the angles of positions 0..T-1 (the rotate-half form)."""
    T = x.size(-2)
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos[:T] + rotated.float() * sin[:T]).type_as(x)


def attention_mask(
    T: int, window: int, device: torch.device, offset: int = 0, keys: int | None = None
) -> torch.Tensor:
    """Boolean (T, S) mask, True where query i may attend key j: j ≤ i, and i − j < window.

    Queries sit at positions ``offset`` … ``offset + T − 1`` and keys at 0 … S − 1
    (S = ``keys``, default T): with a KV cache the new queries follow the cached keys."""
    i = offset + torch.arange(T, device=device)[:, None]
    j = torch.arange(T if keys is None else keys, device=device)[None, :]
    allowed = j <= i
    if window:
        allowed = allowed & (i - j < window)
    return allowed


@dataclass
class LayerKV:
    """One layer's cached keys and values (B, K, S, D) for incremental decoding."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.size(2)


class KVCache:
    """Keys and values of every layer for the tokens decoded so far (``Transformer.forward``
    with ``cache=`` appends to it), so each new token costs one position, not the sequence."""

    def __init__(self, layers: int):
        self.layers = [LayerKV() for _ in range(layers)]

    @property
    def length(self) -> int:
        """Tokens cached (the position of the next one)."""
        return self.layers[0].length


class Attention(nn.Module):
    """Grouped-query attention (Ainslie et al. 2023) with RoPE and an optional logit soft-cap.

    Without a soft-cap it calls F.scaled_dot_product_attention (flash/efficient kernels). With
    one (Grok-1: 30·tanh(x/30)) SDPA cannot fuse the cap: on CPU the scores are computed
    explicitly, capped and soft-maxed in fp32; on GPU FlexAttention fuses the cap instead.
    With a ``LayerKV`` the new tokens attend to the cached keys too (decoding).
    """

    def __init__(self, spec: ModelSpec, window: int = 0):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.n_kv_heads, spec.dim_head
        self.rope = spec.position == "rope"
        self.softcap = spec.attn_logit_softcap
        self.window = window
        h, q_dim, kv_dim = spec.hidden, spec.heads * spec.dim_head, spec.n_kv_heads * spec.dim_head
        self.q = nn.Linear(h, q_dim, bias=spec.bias)
        self.k = nn.Linear(h, kv_dim, bias=spec.bias)
        self.v = nn.Linear(h, kv_dim, bias=spec.bias)
        self.o = nn.Linear(q_dim, h, bias=spec.bias)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: LayerKV | None = None
    ) -> torch.Tensor:
        B, T, _ = x.shape
        pos = 0 if kv is None else kv.length
        q = self.q(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v(x).view(B, T, -1, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        if self.rope:
            q, k = apply_rope(q, cos[pos:], sin[pos:]), apply_rope(k, cos[pos:], sin[pos:])
        if kv is not None:
            if kv.k is not None:
                k, v = torch.cat((kv.k, k), dim=2), torch.cat((kv.v, v), dim=2)  # (B, K, S, D)
            kv.k, kv.v = k, v
            mask = attention_mask(T, self.window, x.device, offset=pos, keys=k.size(2))
            if self.softcap:
                y = self._capped_attention(q, k, v, mask)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        elif self.softcap and q.is_cuda:
            y = flex_capped_attention(q, k, v, self.softcap, self.window)
        elif self.softcap:
            y = self._capped_attention(q, k, v, attention_mask(T, self.window, q.device))
        elif self.window:
            mask = attention_mask(T, self.window, x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, H·D)
        return self.o(y)  # (B, T, C)

    def _capped_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Soft-capped attention with explicit fp32 scores; ``mask`` (T, S) from
        ``attention_mask``. q (B, H, T, D), k and v (B, K, S, D) → (B, H, T, D)."""
        groups = self.heads // self.kv_heads
        k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        v = v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(self.head_dim)  # (B, H, T, S)
        scores = self.softcap * torch.tanh(scores / self.softcap)
        scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1).type_as(v)
        return probs @ v  # (B, H, T, D)


@functools.cache
def _block_mask(T: int, window: int, device: str) -> BlockMask:
    def causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        allowed = q >= k
        return allowed & (q - k < window) if window else allowed

    return create_block_mask(causal, None, None, T, T, device=device)


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def flex_capped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cap: float, window: int = 0
) -> torch.Tensor:
    """Soft-capped causal attention with FlexAttention (PyTorch 2.5+, the Gemma-2 soft-cap
    recipe): the cap is a score_mod on the already 1/√D-scaled scores and the causal or
    sliding-window mask a block mask, so the (T, T) scores are never materialised.
    q (B, H, T, D), k and v (B, K, T, D) → (B, H, T, D)."""

    def softcap(score: torch.Tensor, b: Any, h: Any, qi: Any, ki: Any) -> torch.Tensor:
        return cap * torch.tanh(score / cap)

    mask = _block_mask(q.size(-2), window, str(q.device))
    flex = _compiled_flex() if q.is_cuda else flex_attention
    return flex(q, k, v, score_mod=softcap, block_mask=mask, enable_gqa=True)


def activation(kind: str, x: torch.Tensor) -> torch.Tensor:
    """GeGLU/GELU: tanh-approximate GELU (as Grok-1 and GPT-2); SwiGLU: SiLU; ReLU²: relu(x)²."""
    if kind in ("geglu", "gelu"):
        return F.gelu(x, approximate="tanh")
    if kind == "swiglu":
        return F.silu(x)
    return F.relu(x).square()  # relu2 (So et al. 2021, Primer)


class MLP(nn.Module):
    """A dense FFN, or one shared expert: down(act(gate(x)) · up(x)) if gated, else down(act(up(x)))."""

    def __init__(self, spec: ModelSpec, width: int):
        super().__init__()
        self.kind = spec.mlp
        self.gate = nn.Linear(spec.hidden, width, bias=spec.bias) if spec.gated else None
        self.up = nn.Linear(spec.hidden, width, bias=spec.bias)
        self.down = nn.Linear(width, spec.hidden, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate is not None:
            return self.down(activation(self.kind, self.gate(x)) * self.up(x))
        return self.down(activation(self.kind, self.up(x)))


def local(p: torch.Tensor) -> torch.Tensor:
    """The shard this rank holds of a parameter a parallel plan turned into a DTensor (the
    whole tensor otherwise): the grouped GEMM below runs on plain tensors."""
    return p.to_local() if isinstance(p, DTensor) else p


def expert_counts(idx: torch.Tensor, experts: int) -> torch.Tensor:
    """Routing slots per expert (E,) int64 from idx (N, k), without a host sync: a
    scatter-add into a fixed-size tensor (``bincount`` sizes its output from the data)."""
    flat = idx.flatten()
    return torch.zeros(experts, dtype=torch.int64, device=idx.device).scatter_add_(
        0, flat, torch.ones_like(flat)
    )


def grouped_linear(
    x: torch.Tensor,
    w: torch.Tensor,
    offs: torch.Tensor,
    rows: torch.Tensor,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """x (M, K) with rows grouped by expert (group g ends at offs[g]) times w (G, K, N) → (M, N),
    one GEMM per group in one ``F.grouped_mm`` call (PyTorch 2.8+; eager on CPU in fp32 too).
    ``rows`` (M,) names each row's group, for the per-expert bias (G, N).

    ``torch.compile`` traces ``grouped_mm`` only in bf16 (its meta kernel follows the CUDA
    one); a compiled fp32 model takes ``dense_grouped_linear`` instead, also sync-free."""
    w = local(w).to(x.dtype)
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        y = dense_grouped_linear(x, w, rows)
    else:
        y = F.grouped_mm(x, w, offs=offs)
    return y if bias is None else y + local(bias).to(y.dtype)[rows]


def dense_grouped_linear(x: torch.Tensor, w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The grouped product by brute force: every row times every group's weight (G, M, N),
    then each row's own group picked; G times the FLOPs, no host sync, traceable in fp32."""
    every = torch.matmul(x, w)  # (G, M, N)
    return every[rows, torch.arange(x.size(0), device=x.device)]  # (M, N)


class Experts(nn.Module):
    """E routed experts with stacked weights (E, C, F), applied to tokens already grouped by
    expert with grouped GEMMs: no loop over experts, no host sync, no graph break.
    ``F.grouped_mm`` needs rows 16-byte aligned: C and F multiples of 8 in bf16, 4 in fp32."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        E, C, Fw = spec.experts, spec.hidden, spec.moe_ffn
        self.kind = spec.mlp
        self.w_gate = nn.Parameter(torch.empty(E, C, Fw)) if spec.gated else None
        self.w_up = nn.Parameter(torch.empty(E, C, Fw))
        self.w_down = nn.Parameter(torch.empty(E, Fw, C))
        self.b_gate = nn.Parameter(torch.zeros(E, Fw)) if spec.bias and spec.gated else None
        self.b_up = nn.Parameter(torch.zeros(E, Fw)) if spec.bias else None
        self.b_down = nn.Parameter(torch.zeros(E, C)) if spec.bias else None

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """x (M, C), its rows grouped by expert, ``counts`` (E,) rows per expert → (M, C)."""
        offs = counts.cumsum(0).to(torch.int32)  # (E,) end of each expert's rows
        experts = torch.arange(counts.numel(), device=x.device)
        rows = experts.repeat_interleave(counts, output_size=x.size(0))  # (M,) expert of a row
        up = grouped_linear(x, self.w_up, offs, rows, self.b_up)  # (M, F)
        if self.w_gate is not None:
            gate = grouped_linear(x, self.w_gate, offs, rows, self.b_gate)
            hidden = activation(self.kind, gate) * up
        else:
            hidden = activation(self.kind, up)
        return grouped_linear(hidden, self.w_down, offs, rows, self.b_down)  # (M, C)


def load_balancing_loss(probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Switch Transformer auxiliary loss (Fedus et al. 2021, Eq. 4): E · Σ_i f_i · P_i.

    f_i is the fraction of the N·k routing slots sent to expert i (``counts`` (E,)), P_i the
    mean router probability of expert i over the N tokens (``probs`` (N, E)); a perfectly
    uniform router scores 1.
    """
    f = counts.float() / counts.sum()  # (E,)
    P = probs.mean(dim=0)  # (E,)
    return probs.size(1) * (f * P).sum()


class LoadBalancing(nn.Module):
    """``load_balancing_loss`` as a module without parameters, so that a parallel plan can
    see its inputs: when a micro-batch's tokens are split over ranks, the plan gathers the
    router probabilities and counts of all of them first (``tensor_parallel.py``)."""

    def forward(self, probs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return load_balancing_loss(probs, counts)


class MoE(nn.Module):
    """Top-k routed experts (+ shared experts). The router runs in fp32 with the softmax over
    all experts before the top-k (Grok-1, Mixtral); gates are renormalised only if the spec
    says so (Grok-1 does not)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.top_k, self.renormalize, self.experts_n = (
            spec.top_k,
            spec.moe_renormalize,
            spec.experts,
        )
        self.router = nn.Linear(spec.hidden, spec.experts, bias=False)
        self.experts = Experts(spec)
        self.shared = nn.ModuleList(MLP(spec, spec.moe_ffn) for _ in range(spec.shared_experts))
        self.balance = LoadBalancing()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        tokens = x.reshape(B * T, C)  # (N, C)
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(tokens.float(), self.router.weight.float())  # (N, E) in fp32
        probs = logits.softmax(dim=-1)
        gates, idx = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.renormalize:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        counts = expert_counts(idx, self.experts_n)  # (E,)
        order = idx.flatten().argsort(stable=True)  # (N·k,) slots grouped by expert
        token = order // self.top_k  # (N·k,) the token each slot came from
        y = self.experts(tokens[token], counts)  # (N·k, C)
        y = (y * gates.flatten()[order, None].to(y.dtype)).to(x.dtype)
        y = torch.zeros_like(tokens).index_add_(0, token, y)  # (N, C)
        for expert in self.shared:
            y = y + expert(tokens)
        return y.view(B, T, C), self.balance(probs, counts)


class Block(nn.Module):
    """One layer. Pre-norm: x + f(norm(x)). Sandwich (Grok-1): x + norm(f(norm(x)))."""

    def __init__(self, spec: ModelSpec, layer: int):
        super().__init__()
        local = spec.sliding_window and layer % spec.sliding_window_every == 0
        sandwich = spec.norm_layout == "sandwich"
        self.attn_norm = make_norm(spec)
        self.attn = Attention(spec, window=spec.sliding_window if local else 0)
        self.attn_post_norm = make_norm(spec) if sandwich else nn.Identity()
        self.mlp_norm = make_norm(spec)
        self.is_moe = spec.is_moe_layer(layer)
        self.mlp = MoE(spec) if self.is_moe else MLP(spec, spec.ffn_width)
        self.mlp_post_norm = make_norm(spec) if sandwich else nn.Identity()

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: LayerKV | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attn_post_norm(self.attn(self.attn_norm(x), cos, sin, kv))  # (B, T, C)
        if self.is_moe:
            h, aux = self.mlp(self.mlp_norm(x))
        else:
            h, aux = self.mlp(self.mlp_norm(x)), torch.zeros((), device=x.device)
        return x + self.mlp_post_norm(h), aux


class OutputHead(nn.Module):
    """Logits x·Wᵀ·m (B, T, V) from the last hidden states, W the untied head's weight or the
    (tied) embedding's; no parameters of its own, so one class serves both."""

    def __init__(self, multiplier: float):
        super().__init__()
        self.multiplier = multiplier

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight) * self.multiplier


# --- initialisation ------------------------------------------------------------------------


def draw_init_seed() -> int:
    """The initialisation seed, drawn from the global CPU RNG (``torch.manual_seed`` sets it)."""
    return int(torch.randint(0, 2**62, (1,), device="cpu")[0])


def initial_value(
    name: str,
    shape: torch.Size | tuple[int, ...],
    spec: ModelSpec,
    seed: int,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The initial value of parameter ``name`` (full shape): N(0, 0.02), output projections
    N(0, 0.02/√(2L)) (GPT-2), unit norm weights, zero biases. Each parameter has its own
    generator, seeded by ``seed`` and the name, so a rank that holds one shard of one stage
    computes exactly the values a single process would (and a tied embedding's copy on the
    last pipeline stage equals the first stage's)."""
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name:
        return (torch.ones if leaf == "weight" else torch.zeros)(shape, device=device, dtype=dtype)
    if leaf.startswith("b_") or leaf == "bias":
        return torch.zeros(shape, device=device, dtype=dtype)
    output = ".o." in name or ".down." in name or leaf == "w_down"
    std = INIT_STD / math.sqrt(2 * spec.layers) if output else INIT_STD
    g = torch.Generator(device=device).manual_seed((seed + zlib.crc32(name.encode())) % 2**63)
    return torch.empty(shape, device=device, dtype=dtype).normal_(0.0, std, generator=g)


@torch.no_grad()
def fill_rope_tables(module: nn.Module, spec: ModelSpec) -> None:
    """Compute the RoPE buffers of ``module`` and of every submodule holding them."""
    cos, sin = rope_tables(spec.seq_len, spec.dim_head, spec.rope_theta)
    for sub in module.modules():
        if isinstance(getattr(sub, "rope_cos", None), torch.Tensor):
            sub.rope_cos.copy_(cos)
            sub.rope_sin.copy_(sin)


# --- the model -----------------------------------------------------------------------------


class Transformer(nn.Module):
    """Embedding → L blocks → final norm → output head (tied to the embedding if the spec says)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        check_trainable(spec)
        self.spec = spec
        self.init_seed = draw_init_seed()  # first: the weights depend on torch.manual_seed only
        self.tok_emb = nn.Embedding(spec.vocab, spec.hidden)
        self.pos_emb = (
            nn.Embedding(spec.seq_len, spec.hidden) if spec.position == "learned" else None
        )
        self.blocks = nn.ModuleList(Block(spec, i) for i in range(spec.layers))
        self.norm = make_norm(spec)
        self.lm_head = None if spec.tied_embeddings else nn.Linear(spec.hidden, spec.vocab, False)
        self.head = OutputHead(spec.output_multiplier)
        self.register_buffer("rope_cos", torch.empty(spec.seq_len, spec.dim_head), persistent=False)
        self.register_buffer("rope_sin", torch.empty(spec.seq_len, spec.dim_head), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Every parameter from ``initial_value`` (one generator per parameter, seeded by
        ``init_seed``, drawn from the global RNG when the model was built so that
        ``torch.manual_seed`` decides the weights, and its name) and the RoPE tables. A
        meta-device build is left empty: ``parallelize.materialize`` fills each rank's shards
        with the same values."""
        if self.rope_cos.device.type == "meta":
            return
        for name, p in self.named_parameters():
            p.copy_(initial_value(name, p.shape, self.spec, self.init_seed, p.device, p.dtype))
        fill_rope_tables(self, self.spec)

    def num_params(self) -> int:
        """Distinct parameters (a tied embedding counts once), as ``plan.params.total_params``."""
        return sum(p.numel() for p in self.parameters())

    def new_cache(self) -> KVCache:
        """An empty KV cache for ``forward(..., cache=)``."""
        return KVCache(len(self.blocks))

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """Logits (B, T, V) of ``idx`` (B, T); the mean cross-entropy against ``targets``.

        With ``cache`` the tokens continue the cached ones (positions cache.length …) and
        their keys and values are appended to it."""
        B, T = idx.shape
        pos = 0 if cache is None else cache.length
        if pos + T > self.spec.seq_len:
            raise ValueError(
                f"sequence of {pos + T} tokens is longer than seq_len={self.spec.seq_len}"
            )
        x = self.tok_emb(idx) * self.spec.embedding_multiplier  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(pos, pos + T, device=idx.device))
        aux = torch.zeros((), device=idx.device)
        kvs = [None] * len(self.blocks) if cache is None else cache.layers
        for block, kv in zip(self.blocks, kvs, strict=True):
            x, block_aux = block(x, self.rope_cos, self.rope_sin, kv)
            aux = aux + block_aux
        x = self.norm(x)
        weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        logits = self.head(x, weight)  # (B, T, V)
        aux = aux * self.spec.router_aux_loss_coef
        if targets is None:
            return ModelOutput(logits, None, aux)
        loss = F.cross_entropy(logits.float().view(B * T, -1), targets.reshape(B * T))
        return ModelOutput(logits, loss, aux)
