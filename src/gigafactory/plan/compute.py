"""Compute time of one micro-batch, operation by operation.

Each operation is a roofline (Williams et al. 2009): its time is the larger of FLOPs over
the reachable matmul rate and bytes over the reachable memory bandwidth, plus a fixed
per-kernel cost. The reachable rate depends on the kernel kind and on the operation's size:

* ``matmul``/``grouped_matmul``: ``peak · e_kind · Π_d d/(d + d½)`` over the GEMM's three
  dimensions, with d½ = ``GEMM_HALF_DIM`` (small dimensions waste tensor-core tiles and waves;
  a 128-wide tile edge is the unit of Hopper/Blackwell WGMMA/UMMA kernels).
* ``attention``: fused (flash) attention at ``peak · e_attention``; the backward executes
  2.5× the forward's FLOPs (FlashAttention-2, Dao 2023, Sec. 3.1: it recomputes QKᵀ).
* ``memory``: elementwise kernels (norms, activations, residual adds, RoPE, casts, softmax
  of the loss, MoE permutation) move bytes at ``memory_bw · e_memory``.

``e_kind`` are the accelerator's calibrated ``efficiency`` block in its catalog YAML
(``matmul``, ``attention``, ``memory``): one number per
accelerator and kernel kind, never per model or per run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gigafactory.plan.flops import attention_head_dims, attention_span
from gigafactory.spec.hardware import HardwareSpec
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.vec import per_unique, vmax, where

#: GEMM dimension at which a tensor-core kernel reaches half its large-size efficiency.
GEMM_HALF_DIM = 128.0
#: GPU-side cost of one kernel on the critical path (launch gap ~3 µs plus the
#: ramp-down of the last wave; Megatron does not use CUDA graphs by default).
KERNEL_OVERHEAD_S = 10e-6
#: FlashAttention-2 backward FLOPs over forward FLOPs (5 matmuls against 2).
ATTENTION_BWD_RATIO = 2.5
#: Defaults for an accelerator whose YAML lacks a calibration block.
DEFAULT_EFFICIENCY = {
    "matmul": 0.7,
    "attention": 0.5,
    "memory": 0.7,
}

#: Host (CPU) time to dispatch one kernel from eager PyTorch and Transformer Engine's Python
#: layers. When a layer's kernels are shorter than this, the GPU waits on the host; MoE
#: layers also synchronise with the host once per pass (dropless routing reads the token
#: counts per expert), so their queue cannot run ahead.
HOST_LAUNCH_S = 20e-6
#: Extra kernels per fp8 GEMM call: quantise the input and update its amax history.
FP8_KERNELS_PER_GEMM = 2
#: Bytes per attention score an unfused kernel moves forward: QKᵀ writes it (2), the fused
#: scale-mask-softmax reads and writes it (4), dropout reads, writes and masks it (5), PV
#: reads it (2) — Megatron-LM 2021 (Korthikanti et al. 2022 Sec. 4.1 lists the same tensors).
UNFUSED_SCORE_BYTES = 13.0

KINDS = ("matmul", "grouped_matmul", "attention", "memory", "host")


@dataclass(frozen=True)
class Software:
    """What the training software does, as far as time is concerned.

    ``flash_attention``: a fused attention kernel (FlashAttention, Dao et al. 2022) that
    skips the masked half and never writes the s×s scores; without it (Megatron-LM before
    2022) the scores go through HBM and the full square is multiplied. ``tp_overlap``: TP
    collectives overlap the neighbouring GEMMs (Megatron-Core/Transformer Engine userbuffers,
    Wang et al. 2022), leaving ``TP_OVERLAP_RESIDUAL`` of their time as contention.

    ``fused_sink_attention``: the fused kernel also accepts attention sinks (a learned softmax
    offset per head, ``ModelSpec.attention_sinks``). FlashAttention 2/3 never do; Transformer
    Engine's cuDNN FusedAttention does from cuDNN 9.13.1 (BSHD/SBHD) and 9.18 (packed THD)
    and otherwise falls back to ``UnfusedDotProductAttention`` (TransformerEngine issues
    #2318 and #2483, PR #2568; Megatron-LM issue #2566). Megatron-Bridge 25.11's GPT-OSS runs
    use BSHD mock data and the same container on B200 and GB200, so their sink attention is
    fused: with it unfused (every layer materialising the s×s scores) the planner predicts the
    GB200 row 65% below its published throughput (the B200 row, s = 4096, would match).

    ``default_sharding``: how a run of this stack shards optimizer state when its layout does
    not say (a published row with a blank ``fsdp`` column). Megatron-Bridge recipes build
    their optimizer with ``distributed_fused_adam_with_cosine_annealing``
    (``recipes/utils/optimizer_utils.py``: ``OptimizerConfig(use_distributed_optimizer=True)``)
    and DDP with ``overlap_grad_reduce`` and ``overlap_param_gather``, i.e. Megatron's
    distributed optimizer (``zero1``: gradient reduce-scatter, parameter all-gather, Adam
    state sharded over the data-parallel group). Stacks whose default is not documented keep
    ``none``.

    ``grad_reduce_in_fp32``: bf16 training (fp8 too: its parameters are bf16) accumulates the
    gradients of the micro-batches in an fp32 buffer and reduces that buffer in fp32 over the
    data-parallel group, so the buffer (memory) and the reduce-scatter/all-reduce
    (communication) are both 4 B/param; otherwise both are the parameters' 2 B
    (``memory.grad_bytes_per_param`` reads it for both). Sources per stack:

    * Megatron-LM, every version (the 2021 code and Megatron-Core trained through it):
      ``megatron/training/arguments.py`` (``megatron/arguments.py`` in 2021) sets
      ``accumulate_allreduce_grads_in_fp32 = True`` for ``--bf16`` unless
      ``--grad-reduce-in-bf16`` is given ("accumulate and all-reduce gradients in fp32 for
      bfloat16 data type."); Megatron-Core's ``param_and_grad_buffer.py`` then makes the
      gradient buffer ``torch.float`` (``grad_dtype = torch.float if
      ddp_config.grad_reduce_in_fp32 else param.dtype``), as the 2021 local DDP did
      (``_get_buffer_type``). For ``--fp16`` the flag keeps its default, off
      (``action='store_true'``): fp16 buffers and fp16 all-reduce. The Megatron-LM 2021
      GPT-3 example (``examples/pretrain_gpt3_175B.sh``) passes ``--fp16`` without it.
    * Megatron-DeepSpeed bf16 (BLOOM): DeepSpeed's ``BF16_Optimizer`` adds each bf16 gradient
      into fp32 accumulators, and the pipeline engine reduces those
      (``PipelineEngine._bf16_reduce_grads`` → ``optimizer.get_grads_for_reduction()`` =
      ``fp32_groups_gradients_flat``).
    * Megatron-Bridge: the ``bf16_mixed`` recipe (and the fp8 recipes built on it) sets
      ``MixedPrecisionConfig.grad_reduce_in_fp32 = True``; ``fp16_mixed`` sets False. Its
      performance scripts override it per model (a published row's ``grad_reduce`` column).
    * NeMo 2: ``MegatronMixedPrecision(grad_reduce_in_fp32=True)`` by default.

    fp16 runs reduce in fp16 in every stack above (``FP16_GRADS_IN_FP32``).

    ``ep_overlap``: the expert all-to-all (dispatch and combine) runs beside the computation
    of another micro-batch instead of on the critical path. DeepSeek-V3's DualPipe
    (DeepSeek-V3 report Sec. 3.2.1, Fig. 4) pairs a forward chunk with a backward chunk of
    different micro-batches and interleaves their attention, dispatch, MLP and combine, "so
    that both all-to-all and PP communication can be fully hidden during execution";
    ``pipeline_schedule = "dualpipe"`` gives its bubble (``comms.dualpipe_bubble_s``).
    Megatron-Core's 1F1B schedule with ``overlap_moe_expert_parallel_comm`` does the same
    for the all-to-all (2025); no packaged row sets it, so other stacks keep it off.

    ``dp_overlap``: the data-parallel gradient reduction (and the distributed optimizer's
    parameter all-gather) overlap the backward (and the next forward), as Megatron-Core's
    DDP does with ``overlap_grad_reduce``/``overlap_param_gather``. Two older stacks
    reduce only after the last micro-batch, on the critical path:

    * DeepSpeed's pipeline engine (Megatron-DeepSpeed: BLOOM, MT-NLG):
      ``deepspeed/runtime/pipe/schedule.py`` ``TrainSchedule.steps`` appends
      ``ReduceTiedGrads()``, ``ReduceGrads()`` and ``OptimizerStep()`` after the final
      step, and the engine executes the instruction stream in order.
    * Megatron-LM 2021: ``megatron/training.py`` ``train_step`` calls
      ``model_module.allreduce_gradients()`` after ``forward_backward_func`` returns (local
      DDP); overlapping the reduction came with Megatron-Core's DDP (2023).

    ``fused_elementwise``: norms, rotary embeddings and the gated activation run as fused
    kernels (Transformer Engine, Apex and Megatron-Core fusions). torchtitan's 2024 Llama
    runs (its ``docs/performance.md``: FSDP2, no ``torch.compile``, ``norm_type =
    "rmsnorm"``) execute them as eager PyTorch ops, each a kernel through HBM
    (``eager_op``).

    ``grad_accumulation``: how each micro-batch's weight gradients join the accumulated ones
    (``grad_accumulation_s``). ``fused``: the weight-gradient GEMM accumulates in place into
    the main gradient (Megatron-Core ``gradient_accumulation_fusion``,
    ``LinearWithGradAccumulationAndAsyncCommunication``; FSDP2 reduce-scatters each
    micro-batch's own), no extra pass. ``main_grad_add``: Megatron-LM 2021's local DDP hook
    runs ``param.main_grad.add_(param.grad.data)`` after every backward. ``bf16_optimizer``:
    DeepSpeed's pipeline engine calls ``optimizer.update_hp_grads()`` after every backward
    (``_exec_backward_pass``), and ``BF16_Optimizer._update_hp_grad`` does
    ``hp_grad.add_(lp.grad.to(float32))``.

    ``sequence_parallel``: Megatron's sequence parallelism (Korthikanti et al. 2022,
    Sec. 4.2.2) splits the layer norms, dropouts and residual adds over the TP ranks, and
    each TP all-reduce becomes a reduce-scatter and an all-gather (same bytes). Before it,
    those ops ran whole on every TP rank and their activations were held whole (the
    replicated norms and dropouts are that paper's baseline): Megatron-LM 2021 (the SC21
    runs) and the bigscience Megatron-DeepSpeed fork that trained BLOOM (its ``arguments.py``
    has no sequence-parallel option). The layout of a row of such a stack takes it
    (``runs.PublishedRun.layout``).

    ``pipeline_p2p_waits``: point-to-point transfers of one micro-batch's activation (or
    its gradient) that a middle pipeline stage waits for, per micro-batch and model chunk,
    beside the pipeline's fill and drain (``step.pipeline_p2p_wait_s``):

    * DeepSpeed's pipeline engine (BLOOM, MT-NLG): ``TrainSchedule.steps`` issues
      ``RecvActivation`` and ``SendGrad`` with each forward step and ``SendActivation`` and
      ``RecvGrad`` with each backward step, and each instruction "is blocking and must be
      paired" with its neighbour's (``deepspeed/runtime/pipe/schedule.py``): 4;
    * Megatron-LM 2021 (``megatron/p2p_communication.py``): each exchange of the 1F1B
      steady state (``send_forward_recv_backward``, ``send_backward_recv_forward``; one
      ``send_forward_backward_recv_forward_backward`` per chunk pair when interleaved, whose
      send side carries an activation and a gradient) runs ``batch_isend_irecv``, waits on
      every request and ``torch.cuda.synchronize()``: 2.

    Both split the tensor over the TP ranks before sending (Megatron's scatter/gather,
    Narayanan et al. 2021 Sec. 4.1; DeepSpeed ``is_pipe_partitioned``). Megatron-Core stacks
    keep 0: only the fill and drain are charged, as before (their schedules were not
    checked here).
    """

    name: str = "megatron-core"
    flash_attention: bool = True
    tp_overlap: bool = True
    fused_sink_attention: bool = True
    default_sharding: str = "none"
    grad_reduce_in_fp32: bool = True
    ep_overlap: bool = False
    pipeline_schedule: str = "1f1b"
    dp_overlap: bool = True
    fused_elementwise: bool = True
    grad_accumulation: str = "fused"
    sequence_parallel: bool = True
    pipeline_p2p_waits: int = 0


#: fp16 training keeps fp16 gradient buffers and reduces them in fp16: Megatron-LM only turns
#: ``accumulate_allreduce_grads_in_fp32`` on for bf16, Megatron-Bridge's ``fp16_mixed`` sets
#: ``grad_reduce_in_fp32=False``.
FP16_GRADS_IN_FP32 = False

MODERN = Software()
#: Known frameworks of the published runs; anything else is treated as modern.
FRAMEWORKS = {
    "megatron-lm-2021": Software(
        "megatron-lm-2021",
        flash_attention=False,
        tp_overlap=False,
        dp_overlap=False,
        grad_accumulation="main_grad_add",
        sequence_parallel=False,
        pipeline_p2p_waits=2,
    ),
    "megatron-deepspeed": Software(
        "megatron-deepspeed",
        flash_attention=False,
        tp_overlap=False,
        dp_overlap=False,
        grad_accumulation="bf16_optimizer",
        sequence_parallel=False,
        pipeline_p2p_waits=4,
    ),
    "megatron-core": MODERN,
    "megatron-bridge": Software("megatron-bridge", default_sharding="zero1"),
    "nemo": Software("nemo"),
    # torchtitan 2024 (docs/performance.md): FSDP2, eager (no compile), default sharding fsdp
    "torchtitan": Software("torchtitan", default_sharding="fsdp", fused_elementwise=False),
    # DeepSeek's HAI-LLM (DeepSeek-V3 report Sec. 3.2): DualPipe, ZeRO-1 data parallelism.
    "hai-llm": Software(
        "hai-llm", default_sharding="zero1", ep_overlap=True, pipeline_schedule="dualpipe"
    ),
}


def prior_hardware(hardware: HardwareSpec) -> HardwareSpec:
    """``hardware`` with its fitted efficiencies removed: every kernel kind reads the
    documented prior (``DEFAULT_EFFICIENCY``); unfitted entries (``nvlink``) stay."""
    keep = {k: v for k, v in hardware.efficiency.items() if k not in DEFAULT_EFFICIENCY}
    return dataclasses.replace(hardware, efficiency=keep)


def software_with(sw: Software, layout: LayoutSpec) -> Software:
    """``sw`` with the layout's own gradient-reduce dtype when it sets one."""
    if not layout.grad_reduce:
        return sw
    return dataclasses.replace(sw, grad_reduce_in_fp32=layout.grad_reduce == "fp32")


def software_for(framework: str) -> Software:
    """The ``Software`` of a framework name (by prefix, e.g. ``megatron-core-0.8``)."""
    key = framework.strip().lower()
    for prefix, sw in FRAMEWORKS.items():
        if key.startswith(prefix):
            return sw
    return MODERN


def efficiency(hardware: HardwareSpec, kind: str, precision: str = "bf16") -> float:
    """The calibrated fraction of peak that ``kind`` kernels reach on ``hardware``, at most 1
    (no kernel beats its roofline).

    One GEMM efficiency serves every GEMM, as a fraction of the peak of its precision:

    * fp8 GEMMs run the same tensor-core pipeline at twice the rate (Hopper ``wgmma`` and
      Blackwell ``tcgen05`` issue fp8 at 2× bf16 throughput, H100/B200 data sheets), so they
      reach the same fraction of the fp8 peak; what fp8 adds is not a slower GEMM but extra
      kernels: quantising each GEMM input (``layer_ops``' ``fp8_casts``, 3 B per element:
      bf16 read, fp8 written) and the scaling/amax kernels per GEMM call
      (``FP8_KERNELS_PER_GEMM``; Transformer Engine's ``Float8CurrentScaling`` and delayed
      scaling recipes). A separately fitted fp8 efficiency was a free parameter the Hopper
      rows could not inform (no fp8 row): dense fp8 runs on H100 came out 8–23% slow.
    * A grouped GEMM (the routed experts) reads the plain matmul value: Transformer
      Engine's ``GroupedLinear`` and Megatron-Core's ``GroupedMLP`` (CUTLASS grouped GEMM)
      run the same tensor-core tiles as one GEMM per expert, so what they lose on small
      experts is the per-expert shape (m = tokens per expert, n or k = the expert width),
      which ``gemm_size_factor`` charges. A grouped efficiency fitted per family did not
      transfer between sources (leave-one-source-out: MBg5 −35%).
    """
    if kind == "grouped_matmul":
        kind = "matmul"
    return min(1.0, hardware.efficiency.get(kind, DEFAULT_EFFICIENCY[kind]))


def gemm_size_factor(m: float, n: float, k: float, half: float = GEMM_HALF_DIM) -> float:
    """Share of the large-GEMM efficiency an (m×k)·(k×n) GEMM reaches: Π_d d/(d + d½)."""
    return (m / (m + half)) * (n / (n + half)) * (k / (k + half))


@dataclass(frozen=True)
class Op:
    """One forward operation of a micro-batch on one GPU.

    ``flops`` and ``bytes`` are per call; ``calls`` how many identical calls (e.g. one per
    local expert); ``shape`` the GEMM (m, n, k) for size-dependent efficiency.
    """

    name: str
    kind: str
    flops: float = 0.0
    bytes: float = 0.0
    calls: int = 1
    shape: tuple[float, float, float] = (0.0, 0.0, 0.0)
    precision: str = "bf16"

    @property
    def total_flops(self) -> float:
        return self.flops * self.calls


def gemm(
    name: str, m: float, n: float, k: float, precision: str, calls: int = 1, kind: str = "matmul"
) -> Op:
    """A GEMM op: 2mnk FLOPs; bytes of A, B and C at the precision's element size."""
    elt = 1.0 if precision == "fp8" else 2.0
    return Op(
        name, kind, 2.0 * m * n * k, (m * k + k * n) * elt + m * n * 2.0, calls, (m, n, k),
        precision,
    )  # fmt: skip


def memory_op(name: str, nbytes: float, calls: int = 1) -> Op:
    """An elementwise (memory-bound) op moving ``nbytes``."""
    return Op(name, "memory", 0.0, nbytes, calls)


def op_time_s(op: Op, hardware: HardwareSpec, bwd_factor: float = 1.0) -> float:
    """Roofline time of ``op`` (scaled by ``bwd_factor`` for the backward), plus launch costs.

    time = calls · (max(F / (peak · e · size), B / (bw · e_mem)) + KERNEL_OVERHEAD_S).
    """
    if op.kind == "memory":
        bw = hardware.memory_bw_tbs * 1e12 * efficiency(hardware, "memory")
        return op.calls * (bwd_factor * op.bytes / bw + KERNEL_OVERHEAD_S)
    if op.kind == "attention":
        rate = hardware.peak("bf16") * 1e12 * efficiency(hardware, "attention")
    else:
        rate = hardware.peak(op.precision) * 1e12 * efficiency(hardware, op.kind, op.precision)
        rate *= gemm_size_factor(*op.shape)
    bw = hardware.memory_bw_tbs * 1e12 * efficiency(hardware, "memory")
    t = vmax(op.flops / rate, op.bytes / bw)
    return op.calls * (bwd_factor * t + KERNEL_OVERHEAD_S * max(1.0, bwd_factor))


def _gemm_precision(layout: LayoutSpec) -> str:
    return "fp8" if layout.precision == "fp8" else "bf16"


def attention_ops(
    model: ModelSpec, layout: LayoutSpec, tokens: float, local: bool, sw: Software = MODERN
) -> list[Op]:
    """Projections and the attention core of one layer for ``tokens`` tokens.

    A fused core executes the causal lower triangle, or the window band (flash kernels skip
    masked tiles), with the keys of the whole sequence (context-parallel ranks exchange
    them). An unfused core (no flash kernel, or sinks the fused kernel refuses; see
    ``Software``) multiplies the whole s×s square, masks the causal half and any window on
    the materialised scores, and moves them through HBM.
    """
    t, h, a = layout.tp, model.hidden, model.heads
    p = _gemm_precision(layout)
    ops: list[Op] = []
    if model.attention == "mla":
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        if model.q_lora_rank:
            ops.append(gemm("q_down", tokens, model.q_lora_rank, h, p))
            ops.append(gemm("q_up", tokens, a * qk / t, model.q_lora_rank, p))
        else:
            ops.append(gemm("q_proj", tokens, a * qk / t, h, p))
        ops.append(gemm("kv_down", tokens, model.kv_lora_rank + model.qk_rope_head_dim, h, p))
        kv_up = a * (model.qk_nope_head_dim + model.v_head_dim) / t
        ops.append(gemm("kv_up", tokens, kv_up, model.kv_lora_rank, p))
        o_in = a * model.v_head_dim / t
    else:
        d, k = model.dim_head, model.n_kv_heads
        ops.append(gemm("qkv_proj", tokens, (a * d + 2 * k * d) / t, h, p))
        o_in = a * d / t
    s = model.seq_len
    fused = sw.flash_attention and (sw.fused_sink_attention or not model.attention_sinks)
    window = model.sliding_window if local and fused else 0
    span = attention_span(s, window, causal=fused)
    d_qk, d_v = attention_head_dims(model)
    core_flops = 2.0 * tokens * (a / t) * span * (d_qk + d_v)
    core_bytes = tokens * (a / t) * (2 * d_qk + 2 * d_v) * 2.0
    if fused:
        ops.append(Op("attention_core", "attention", core_flops, core_bytes))
    else:  # batched GEMMs over the full square, scores through HBM
        sq = layout.micro_batch * a / t
        shape = (float(s), span, float(d_qk))
        ops.append(Op("attention_core", "matmul", core_flops, core_bytes, 1, shape, "bf16"))
        ops.append(memory_op("attention_scores", sq * s * span * UNFUSED_SCORE_BYTES / layout.cp))
    ops.append(gemm("o_proj", tokens, h, o_in, p))
    ops.append(memory_op("rope", tokens * (a + model.n_kv_heads) * d_qk * 2 * 2 / t))
    return ops


def mlp_ops(model: ModelSpec, layout: LayoutSpec, tokens: float, moe: bool) -> list[Op]:
    """The FFN of one layer: a dense MLP, or router + routed experts (+ shared experts).

    Routed experts assume balanced routing (the published MoE rows force it): each of the
    E/ep local experts gets tokens·top_k·ep/E tokens, all-gathered over TP.
    """
    t, h = layout.tp, model.hidden
    p = _gemm_precision(layout)
    g = 2 if model.gated else 1
    ops: list[Op] = []

    def ffn(prefix: str, m: float, width: float, calls: int, kind: str) -> None:
        ops.append(gemm(f"{prefix}_up", m, g * width / t, h, p, calls, kind))
        ops.append(memory_op(f"{prefix}_act", m * (g + 1) * width / t * 2.0, calls))
        ops.append(gemm(f"{prefix}_down", m, h, width / t, p, calls, kind))

    if not moe:
        ffn("mlp", tokens, model.ffn_width, 1, "matmul")
        return ops
    ops.append(gemm("router", tokens, model.experts, h, "bf16"))
    local = vmax(1, model.experts // layout.ep)
    per_expert = tokens * model.top_k * layout.ep / model.experts
    ops.append(memory_op("moe_permute", tokens * model.top_k * h * 2.0 * 2 * 2 / t))
    ffn("expert", per_expert, model.moe_ffn, local, "grouped_matmul")
    if model.shared_experts:
        ffn("shared", tokens, model.moe_ffn * model.shared_experts, 1, "matmul")
    return ops


def layer_ops(
    model: ModelSpec,
    layout: LayoutSpec,
    tokens: float,
    moe: bool,
    local: bool,
    sw: Software = MODERN,
) -> list[Op]:
    """Every forward op of one transformer layer on one GPU for ``tokens`` tokens."""
    t = layout.tp if layout.sequence_parallel else 1
    h = model.hidden
    ops = attention_ops(model, layout, tokens, local, sw) + mlp_ops(model, layout, tokens, moe)
    norms = 4 if model.norm_layout == "sandwich" else 2
    ops.append(memory_op("norms", tokens * h * 2 * 2 / t, norms))
    ops.append(memory_op("residual_add", tokens * h * 3 * 2 / t, 2))
    if layout.precision == "fp8":
        cast = sum(o.shape[0] * o.shape[2] * o.calls for o in ops if o.precision == "fp8")
        ops.append(memory_op("fp8_casts", 3.0 * cast))
    if not sw.fused_elementwise:
        ops = [eager_op(op, model.gated) for op in ops]
    return ops


#: Bytes per element an eager PyTorch implementation moves over a fused kernel's, per
#: elementwise op (forward; the backward's autograd kernels scale alike). Counted from the
#: Llama reference code that torchtitan's 2024 Llama model used:
#:
#: * RMSNorm ``_norm(x.float()).type_as(x) * weight`` with ``x * rsqrt(x.pow(2).mean(-1) +
#:   eps)``: ``float`` (2 B read, 4 written), ``pow`` (4, 4), ``mean`` (4), ``mul`` (4, 4),
#:   ``type_as`` (4, 2), ``* weight`` (2, 2) = 36 B against a fused norm's 4 (read, write);
#: * rotary ``apply_rotary_emb``: ``float().reshape`` and ``view_as_complex`` (2, 4), the
#:   complex multiply (8, 8), ``view_as_real().flatten().type_as`` (4, 2) = 28 B against 4;
#: * SwiGLU ``silu(w1(x)) * w3(x)``: ``silu`` (2, 2) then ``mul`` (4, 2) = 10 B per output
#:   element against a fused gated activation's 6 (two reads, one write).
EAGER_BYTES_FACTOR = {"norms": 36.0 / 4.0, "rope": 28.0 / 4.0}
EAGER_GLU_FACTOR = 10.0 / 6.0


def eager_op(op: Op, gated: bool) -> Op:
    """``op`` as eager PyTorch runs it (``Software.fused_elementwise`` off): the unfused
    elementwise ops move ``EAGER_BYTES_FACTOR`` times the bytes; GEMMs are unchanged."""
    factor = EAGER_BYTES_FACTOR.get(op.name, 1.0)
    if gated and op.name.endswith("_act"):
        factor = EAGER_GLU_FACTOR
    return op if factor == 1.0 else dataclasses.replace(op, bytes=op.bytes * factor)


def head_ops(model: ModelSpec, layout: LayoutSpec, tokens: float) -> list[Op]:
    """Output head (bf16 GEMM, vocab-parallel over tp) and the fp32 softmax cross-entropy,
    which reads and writes the logits about three times (max, exp-sum, gradient)."""
    t, v = layout.tp, model.vocab
    return [
        gemm("head", tokens, v / t, model.hidden, "bf16"),
        memory_op("cross_entropy", tokens * v / t * 4.0 * 3),
    ]


@dataclass(frozen=True)
class PassTimes:
    """Seconds of one micro-batch through the slowest pipeline stage, by pass and kernel kind."""

    forward_s: float
    backward_s: float
    recompute_s: float
    by_kind_s: dict[str, float]
    attention_core_s: float  # forward attention-core time per layer (CP overlap window)
    stage_layers: float = 0.0  # transformer layers on that stage

    @property
    def total_s(self) -> float:
        return self.forward_s + self.backward_s + self.recompute_s


def _ops_time(ops: list[Op], hardware: HardwareSpec, backward: bool) -> dict[str, float]:
    out = dict.fromkeys(KINDS, 0.0)
    kernels = 0.0
    for op in ops:
        factor = 1.0
        if backward:
            factor = ATTENTION_BWD_RATIO if op.name == "attention_core" else 2.0
        out[op.kind] += op_time_s(op, hardware, factor)
        per_call = 1 + (FP8_KERNELS_PER_GEMM if op.precision == "fp8" else 0)
        kernels += op.calls * per_call * (2 if backward else 1)
    out["host"] = vmax(0.0, kernels * HOST_LAUNCH_S - sum(out.values()))
    return out


def ops_time(ops: list[Op], hardware: HardwareSpec, backward: bool) -> dict[str, float]:
    """Seconds by kernel kind of ``ops`` forward, or backward (GEMMs twice: data and weight
    gradients; attention 2.5×; elementwise twice the bytes).

    ``host`` is the time the GPU waits for the CPU: kernels × ``HOST_LAUNCH_S`` beyond the
    GPU's own time. The host can run ahead of the GPU except across a synchronisation: MoE
    layers sync at the router (dropless dispatch copies the per-expert token counts to the
    host), so the ops before and after it are launch-bound separately.
    """
    cut = next((i + 1 for i, op in enumerate(ops) if op.name == "router"), 0)
    parts = [ops[:cut], ops[cut:]] if cut else [ops]
    out = dict.fromkeys(KINDS, 0.0)
    for part in parts:
        for k, v in _ops_time(part, hardware, backward).items():
            out[k] += v
    return out


#: The layout fields one layer's (and the head's) pass times depend on.
LAYER_FIELDS = ("tp", "cp", "ep", "micro_batch")


@dataclass(frozen=True)
class LayerTimes:
    """Seconds of one micro-batch through one average layer (its kinds in proportion) and
    through the head, by kernel kind."""

    forward: dict[str, float]
    backward: dict[str, float]
    recompute_s: float
    attention_core_s: float
    head_forward: dict[str, float]
    head_backward: dict[str, float]


def layer_pass_times(
    model: ModelSpec, layout: LayoutSpec, hardware: HardwareSpec, sw: Software = MODERN
) -> LayerTimes:
    """Forward, backward and recompute of one average layer and of the head. Recompute:
    ``full`` repeats every layer's forward, ``selective`` the attention core (Korthikanti
    et al. 2022)."""
    tokens = layout.micro_batch * model.seq_len / layout.cp
    fwd = dict.fromkeys(KINDS, 0.0)
    bwd = dict.fromkeys(KINDS, 0.0)
    rec = 0.0
    core_fwd = 0.0
    local_share = model.local_attention_layers / model.layers
    groups = []
    for moe, count in ((False, model.n_dense_layers), (True, model.moe_layers)):
        if count:
            groups.append((moe, False, count * (1 - local_share)))
            if local_share:
                groups.append((moe, True, count * local_share))
    for moe, local, count in groups:
        ops = layer_ops(model, layout, tokens, moe, local, sw)
        n = count / model.layers
        f = ops_time(ops, hardware, backward=False)
        b = ops_time(ops, hardware, backward=True)
        core = sum(op_time_s(o, hardware) for o in ops if o.name.startswith("attention_"))
        core_fwd += core * n
        for k in KINDS:
            fwd[k] += f[k] * n
            bwd[k] += b[k] * n
        if layout.recompute == "full":
            rec += sum(f.values()) * n
        elif layout.recompute == "selective":
            rec += core * n
    head = head_ops(model, layout, tokens)
    hf, hb = ops_time(head, hardware, False), ops_time(head, hardware, True)
    return LayerTimes(fwd, bwd, rec, core_fwd, hf, hb)


def _layer_and_head_s(one: LayerTimes) -> tuple[float, float]:
    """Seconds of one average layer (forward, backward, recompute) and of the head."""
    per_layer = sum(one.forward.values()) + sum(one.backward.values()) + one.recompute_s
    return per_layer, sum(one.head_forward.values()) + sum(one.head_backward.values())


def _slowest_stage(
    model: ModelSpec, layout: LayoutSpec, per_layer_s: float, head_s: float
) -> tuple[float, float]:
    """(layers, 1 if it holds the head else 0) of the slowest pipeline stage: the last (its
    layers and the head) or the largest other one."""
    first, middle, last = layout.stage_layers(model.layers)
    last_slowest = last * per_layer_s + head_s >= vmax(first, middle) * per_layer_s
    return where(last_slowest, last, vmax(first, middle)), where(last_slowest, 1.0, 0.0)


def stage_total_s(
    model: ModelSpec,
    layout: LayoutSpec,
    hardware: HardwareSpec,
    seq_len: int | None = None,
    sw: Software = MODERN,
) -> float:
    """``stage_pass_times(...).total_s`` without the breakdown by kernel kind: the layer and
    head totals are summed once per distinct layer shape (what the search bounds with)."""
    s = seq_len or model.seq_len
    if s != model.seq_len:
        model = model.replace(seq_len=s)
    per_layer, head = per_unique(
        layout,
        LAYER_FIELDS,
        lambda lay: _layer_and_head_s(layer_pass_times(model, lay, hardware, sw)),
    )
    layers, with_head = _slowest_stage(model, layout, per_layer, head)
    return per_layer * layers + head * with_head


def stage_pass_times(
    model: ModelSpec,
    layout: LayoutSpec,
    hardware: HardwareSpec,
    seq_len: int | None = None,
    sw: Software = MODERN,
) -> PassTimes:
    """One micro-batch through the slowest stage. Even stages: the last, L/pp layers of each
    kind plus the head. Uneven stages (``LayoutSpec.stage_layers``): the last stage (its
    layers plus the head) or the largest other stage, whichever takes longer. Layer kinds
    are spread uniformly over the stages."""
    s = seq_len or model.seq_len
    if s != model.seq_len:
        model = model.replace(seq_len=s)
    one = per_unique(layout, LAYER_FIELDS, lambda lay: layer_pass_times(model, lay, hardware, sw))
    layers, with_head = _slowest_stage(model, layout, *_layer_and_head_s(one))
    fwd = {k: one.forward[k] * layers + one.head_forward[k] * with_head for k in KINDS}
    bwd = {k: one.backward[k] * layers + one.head_backward[k] * with_head for k in KINDS}
    by_kind = {k: fwd[k] + bwd[k] for k in KINDS}
    by_kind["recompute"] = one.recompute_s * layers
    return PassTimes(
        forward_s=sum(fwd.values()),
        backward_s=sum(bwd.values()),
        recompute_s=one.recompute_s * layers,
        by_kind_s=by_kind,
        attention_core_s=one.attention_core_s,
        stage_layers=layers,
    )


def grad_accumulation_bytes_per_param(software: Software, precision: str) -> float:
    """Bytes per local parameter that one micro-batch's gradient accumulation moves outside
    the GEMMs (``Software.grad_accumulation``): ``main_grad_add`` reads the 2-byte gradient
    and reads and writes the main gradient (fp32 for bf16 when the stack accumulates in fp32,
    else 2 B): 6 B for fp16, 10 B for bf16; DeepSpeed's ``bf16_optimizer`` also writes and
    reads the fp32 copy ``lp.grad.to(float32)`` makes: 2 + 4 + 4 + 4 + 4 = 18 B (fp16 runs
    accumulate in the fp16 ``.grad``, 6 B); ``fused``: 0."""
    if software.grad_accumulation == "fused":
        return 0.0
    if precision == "fp16":
        return 6.0
    if software.grad_accumulation == "bf16_optimizer":
        return 18.0
    main = 4.0 if software.grad_reduce_in_fp32 else 2.0
    return 2.0 + 2.0 * main


def grad_accumulation_s(
    params_local: float, hardware: HardwareSpec, software: Software, precision: str
) -> float:
    """Seconds per micro-batch of the gradient accumulation pass over the local parameters,
    memory-bound at the calibrated bandwidth."""
    bw = hardware.memory_bw_tbs * 1e12 * efficiency(hardware, "memory")
    return params_local * grad_accumulation_bytes_per_param(software, precision) / bw


def optimizer_step_s(params_local: float, hardware: HardwareSpec) -> float:
    """Adam update of the local shard, memory-bound: read fp32 master, both moments and the
    gradient (16 B), write master and moments (12 B) and the bf16 weight (2 B): 30 B/param."""
    bw = hardware.memory_bw_tbs * 1e12 * efficiency(hardware, "memory")
    return params_local * 30.0 / bw
