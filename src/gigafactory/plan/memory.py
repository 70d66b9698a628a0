"""Memory per GPU: weights, gradients, optimizer states and activations, and whether it fits.

Mixed-precision Adam (Micikevicius et al. 2018; Rajbhandari et al. 2020, ZeRO Sec. 3): bf16
weights (2 bytes/param), gradients accumulated over micro-batches in the framework's gradient
buffer (Megatron's ``main_grad``: fp32, 4 bytes/param, for bf16 training in Megatron-LM; 2 bytes
where the framework or the run reduces in bf16/fp16, ``grad_bytes_per_param``), an fp32
master copy and two fp32 moments (12 bytes/param). ZeRO-1 (Megatron's distributed optimizer)
shards the 12 bytes over the data-parallel group; FSDP (ZeRO-3) also shards weights and
gradients, keeping about two layers unsharded in flight (prefetch).

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models"), Sec. 4, generalised to GQA/MLA, gated MLPs and MoE; the first pipeline
stage holds the most micro-batches in flight (Sec. 4.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.plan.compute import FP16_GRADS_IN_FP32, MODERN, Software, software_with
from gigafactory.plan.shard import ParamSplit, layers_per_stage, params_per_gpu
from gigafactory.spec.hardware import HardwareSpec
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.vec import vmax, vmin, where

GB = 1e9
#: Share of HBM kept free for the CUDA context, NCCL buffers, cuBLAS/attention workspaces and
#: allocator fragmentation (PyTorch's caching allocator typically loses 5–10% at scale).
HBM_RESERVE_FRACTION = 0.10
#: Unsharded layers FSDP keeps in flight: the one computing and the one being prefetched
#: (PyTorch FSDP2 default forward/backward prefetch of one module).
FSDP_LAYERS_IN_FLIGHT = 2


def weight_bytes_per_param(precision: str) -> float:
    """bf16/fp16 weights: 2 bytes. fp8 training (Transformer Engine) keeps bf16 weights and
    caches an fp8 copy plus its transpose for the backward pass: 2 + 1 + 1 bytes."""
    return 4.0 if precision == "fp8" else (4.0 if precision == "fp32" else 2.0)


def grad_bytes_per_param(precision: str = "bf16", software: Software = MODERN) -> float:
    """Bytes per parameter of the gradient buffer, which is also what the data-parallel
    reduction moves (the buffer is what is reduced): 4 when the stack accumulates and
    reduces in fp32 (``Software.grad_reduce_in_fp32``; fp16 runs: ``FP16_GRADS_IN_FP32``;
    fp32 training always), else the 2 bytes of the bf16/fp16 parameters (fp8 training keeps
    bf16 parameters)."""
    if precision == "fp32":
        return 4.0
    fp32 = FP16_GRADS_IN_FP32 if precision == "fp16" else software.grad_reduce_in_fp32
    return 4.0 if fp32 else 2.0


def optimizer_bytes_per_param() -> float:
    """Adam with an fp32 master copy, first and second moments: 4 + 4 + 4 = 12 bytes
    (ZeRO paper, Sec. 3.1: K = 12)."""
    return 12.0


def korthikanti_activation_bytes(
    s: int, b: int, h: int, a: int, t: int = 1, recompute: str = "none", sp: bool = True
) -> float:
    """Activation bytes of one GPT layer, Korthikanti et al. 2022 Eqs. (1)–(5) and Table 2.

    none: sbh(34 + 5as/h) (with TP+SP: divided by t); with TP but no SP:
    sbh(10 + 24/t + 5as/(ht)). selective: sbh·34/t (the 5as²b attention core is recomputed).
    full: 2sbh (only the layer input; /t with SP).
    """
    sbh = s * b * h
    if recompute == "full":
        return 2.0 * sbh / (t if sp else 1)
    core = 0.0 if recompute == "selective" else 5.0 * a * s / h
    if sp or t == 1:
        return sbh * (34.0 + core) / t
    return sbh * (10.0 + 24.0 / t + core / t)


def layer_activation_bytes_per_token(
    model: ModelSpec,
    moe: bool,
    recompute: str = "none",
    precision: str = "bf16",
    flash: bool = True,
    dropout: bool = False,
    seq_len: int | None = None,
) -> float:
    """Bytes one layer stores per token for the backward pass, before any parallel split.

    Korthikanti et al. 2022 Sec. 4.1 term by term, for the actual shapes: attention keeps
    its input (2h), Q and K (2(a+k)·d_qk), V (2k·d_v), the projection input (2a·d_v), and,
    without a fused (flash) kernel, the softmax output, its dropout mask and output (5·a·s);
    the MLP keeps its input (2h), the activation input (2f, 4f if gated), the down-projection
    input (2f); each norm keeps its input (2h); dropout masks cost 1 byte/element. With every
    term for a GPT (MHA, f = 4h, dropout, no flash) this is exactly 34h + 5as. An MoE layer
    keeps the MLP terms once per routed copy (top_k) plus shared experts. fp8 stores linear
    inputs in 1 byte. ``full`` recompute keeps only the layer input (2h).
    """
    h = model.hidden
    if recompute == "full":
        return 2.0 * h
    s = seq_len or model.seq_len
    lin = 1.0 if precision == "fp8" else 2.0  # bytes per element of a stored GEMM input
    a, k = model.heads, model.n_kv_heads
    if model.attention == "mla":
        d_qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        d_v = model.v_head_dim
        k = a
        lowrank = model.q_lora_rank + model.kv_lora_rank  # the low-rank latents
        attn = lin * h + 2.0 * (a + k) * d_qk + 2.0 * k * d_v + lin * a * d_v + lin * lowrank
    else:
        d_qk = d_v = model.dim_head
        attn = lin * h + 2.0 * (a + k) * d_qk + 2.0 * k * d_v + lin * a * d_v
    if dropout:
        attn += h
    if recompute != "selective" and not flash:
        attn += 5.0 * a * s
    elif flash:
        attn += 4.0 * a  # log-sum-exp per query and head (fp32)

    def ffn(width: int) -> float:
        act = 2.0 * width * (2 if model.gated else 1)
        return lin * h + act + lin * width + (h if dropout else 0.0)

    if moe:
        mlp = (model.top_k + model.shared_experts) * ffn(model.moe_ffn) + 4.0 * model.experts
    else:
        mlp = ffn(model.ffn_width)
    norms = (4 if model.norm_layout == "sandwich" else 2) * 2.0 * h
    return attn + mlp + norms


def inflight_microbatches(layout: LayoutSpec) -> float:
    """Micro-batches whose activations the first stage holds at its peak.

    1F1B (PipeDream-Flush; Narayanan et al. 2021): p (or m if fewer). Interleaved with v
    chunks: p·(1 + (p−1)/(p·v)) (Korthikanti et al. 2022 Sec. 4.2.3). No pipeline: 1.
    """
    p, m = layout.pp, layout.microbatches
    interleaved = vmin(m, p * (1.0 + (p - 1) / (p * layout.vpp)))
    return where(p == 1, 1.0, where(layout.vpp > 1, interleaved, vmin(p, m)))


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per GPU on the first pipeline stage, by part, and whether they fit in HBM."""

    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    capacity_bytes: float
    reserve_bytes: float
    params_per_gpu: float

    @property
    def total_bytes(self) -> float:
        return (
            self.weights_bytes + self.gradients_bytes + self.optimizer_bytes
            + self.activations_bytes
        )  # fmt: skip

    @property
    def usable_bytes(self) -> float:
        return self.capacity_bytes - self.reserve_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.usable_bytes

    @property
    def headroom_bytes(self) -> float:
        return self.usable_bytes - self.total_bytes


def sharded_params(split: ParamSplit) -> float:
    """Parameters one GPU owns when the dense share is split over its data-parallel group and
    the experts over their expert-data-parallel group (ZeRO/FSDP at rest, between layers)."""
    return split.dense / split.dense_dp_group + split.expert / split.expert_dp_group


def state_bytes(
    split: ParamSplit, layout: LayoutSpec, layer_params: float, software: Software = MODERN
) -> tuple[float, ...]:
    """(weights, gradients, optimizer) bytes per GPU for a parameter split under the sharding.

    none: everything replicated. zero1: optimizer / data-parallel group. fsdp: weights,
    gradients and optimizer / group, plus ``FSDP_LAYERS_IN_FLIGHT`` unsharded layers.
    Gradients take ``grad_bytes_per_param`` of ``software``.
    """
    wb, ob = weight_bytes_per_param(layout.precision), optimizer_bytes_per_param()
    gb = grad_bytes_per_param(layout.precision, software)
    if layout.sharding == "none":
        return split.total * wb, split.total * gb, split.total * ob
    sharded = sharded_params(split)
    optimizer = sharded * ob
    if layout.sharding == "zero1":
        return split.total * wb, split.total * gb, optimizer
    gathered = vmin(split.total, FSDP_LAYERS_IN_FLIGHT * layer_params)
    weights = vmin(split.total, sharded + gathered) * wb
    grads = vmin(split.total * gb, (sharded + gathered) * gb)
    return weights, grads, optimizer


def replicated_bytes_per_token(model: ModelSpec, recompute: str, precision: str) -> float:
    """Bytes per token of a layer's stored activations that tensor parallelism without
    sequence parallelism keeps whole on every TP rank (Korthikanti et al. 2022 Sec. 4.2.1,
    the 10·sbh of sbh(10 + 24/t + 5as/(ht))): each norm's input (2h), the inputs of the
    column-parallel QKV and first MLP GEMMs (2h each, 1 byte in fp8); under ``full``
    recompute, the stored layer input (2h). Dropout masks are not stored here
    (``layer_activation_bytes_per_token`` with ``dropout=False``)."""
    h = model.hidden
    if recompute == "full":
        return 2.0 * h
    lin = 1.0 if precision == "fp8" else 2.0
    norms = (4 if model.norm_layout == "sandwich" else 2) * 2.0 * h
    return norms + 2.0 * lin * h


def _per_tp_rank(total: float, replicated: float, layout: LayoutSpec) -> float:
    """One TP rank's share of ``total`` bytes: all of it split with sequence parallelism
    (Korthikanti Sec. 4.2.2); otherwise the ``replicated`` part whole and the rest split."""
    if layout.sequence_parallel:
        return total / layout.tp
    return replicated + (total - replicated) / layout.tp


def activation_bytes(model: ModelSpec, layout: LayoutSpec, seq_len: int | None = None) -> float:
    """Activations of the first stage: per-layer bytes · tokens per micro-batch (b·s/cp) ·
    layers per stage, split over tp (every term with sequence parallelism; without it the
    norms' and column-parallel GEMMs' inputs stay whole, Korthikanti Sec. 4.2) · in-flight
    micro-batches. Under full recompute one layer at a time also holds its full activations
    while it is recomputed: one micro-batch's worth, not one per in-flight micro-batch."""
    s = seq_len or model.seq_len
    tokens = layout.micro_batch * s / layout.cp
    rec, prec = layout.recompute, layout.precision
    per_stage = 0.0
    frac = layers_per_stage(model, layout) / model.layers  # 1/pp for even stages
    for moe, count in ((False, model.n_dense_layers), (True, model.moe_layers)):
        if count:
            per_tok = layer_activation_bytes_per_token(model, moe, rec, prec, seq_len=s)
            per_tok = _per_tp_rank(per_tok, replicated_bytes_per_token(model, rec, prec), layout)
            per_stage += count * frac * per_tok
    stored = per_stage * tokens * inflight_microbatches(layout)
    if rec == "full":
        whole = layer_activation_bytes_per_token(model, model.is_moe, "none", prec, seq_len=s)
        replicated = replicated_bytes_per_token(model, "none", prec)
        stored = stored + _per_tp_rank(whole, replicated, layout) * tokens
    return stored


def memory_per_gpu(
    model: ModelSpec,
    layout: LayoutSpec,
    hardware: HardwareSpec,
    seq_len: int | None = None,
    software: Software = MODERN,
) -> MemoryBreakdown:
    """Every part of the first stage's memory and the HBM it has to fit in."""
    cap = hardware.memory_bytes
    return memory_breakdown(model, layout, cap, HBM_RESERVE_FRACTION * cap, seq_len, software)


def memory_breakdown(
    model: ModelSpec,
    layout: LayoutSpec,
    capacity_bytes: float,
    reserve_bytes: float,
    seq_len: int | None = None,
    software: Software = MODERN,
) -> MemoryBreakdown:
    """The first stage's memory against ``capacity_bytes`` less ``reserve_bytes`` (the trainer
    asks with the memory its device has free now, and no reserve)."""
    software = software_with(software, layout)
    split = params_per_gpu(model, layout)
    layer_params = split.total / vmax(1.0, layers_per_stage(model, layout))
    weights, grads, optim = state_bytes(split, layout, layer_params, software)
    return MemoryBreakdown(
        weights_bytes=weights,
        gradients_bytes=grads,
        optimizer_bytes=optim,
        activations_bytes=activation_bytes(model, layout, seq_len),
        capacity_bytes=capacity_bytes,
        reserve_bytes=reserve_bytes,
        params_per_gpu=split.total,
    )
