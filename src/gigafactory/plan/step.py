"""One training step: compute + exposed communication per kind + pipeline bubble.

step = m · (t_fwd + t_bwd + t_recompute + exposed TP/CP/EP/FSDP per micro-batch
            + pipeline send/receive the schedule waits for)
       + bubble + exposed DP gradient reduce-scatter / parameter all-gather
       + pipeline fill and drain send/receive + optimizer update,
with m micro-batches per pipeline (Narayanan et al. 2021, Sec. 3). Utilisation follows
Chowdhery et al. 2022 (PaLM, App. B): MFU = model FLOPs/s ÷ peak; HFU also counts the
recomputed FLOPs (Korthikanti et al. 2022, Sec. 6).
"""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.plan import comms
from gigafactory.plan.compute import (
    MODERN,
    Software,
    grad_accumulation_s,
    optimizer_step_s,
    software_with,
    stage_pass_times,
)
from gigafactory.plan.flops import hardware_flops_per_token, training_flops_per_token
from gigafactory.plan.memory import MemoryBreakdown, grad_bytes_per_param, memory_per_gpu
from gigafactory.plan.shard import check_layout, params_per_gpu
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.vec import vmax, vmin, where

#: Parameters are all-gathered in bf16. Gradients are reduced in the dtype of the gradient
#: buffer, the same bytes the memory model holds (``memory.grad_bytes_per_param``: fp32 for
#: bf16 training in Megatron-LM, bf16 where the stack or the run says so).
PARAM_GATHER_BYTES = 2.0
#: Share of overlapped TP communication that still costs time (SM and HBM contention
#: between the collective and the GEMM it hides behind; Wang et al. 2022 report 60–80%
#: of the communication hidden).
TP_OVERLAP_RESIDUAL = 0.3
#: Megatron-Core's default DDP bucket, in parameters: max(40M, 1M · DP size)
#: (NVIDIA/Megatron-LM d98e8a6, ``megatron/core/distributed/distributed_data_parallel.py``
#: line 134: ``ddp_config.bucket_size =
#: max(40000000, 1000000 * dp_group.size())``; "larger DP sizes need larger buckets", its
#: ``distributed_data_parallel_config.py``). The last bucket's reduction cannot overlap.
DP_BUCKET_MIN_PARAMS = 40e6
DP_BUCKET_PARAMS_PER_RANK = 1e6


def dp_bucket_params(dp_size: int) -> float:
    """Parameters in one DDP gradient bucket for a data-parallel group of ``dp_size`` ranks."""
    return vmax(DP_BUCKET_MIN_PARAMS, DP_BUCKET_PARAMS_PER_RANK * dp_size)


def dp_overlap_window_s(backward_s: float, recompute_s: float) -> float:
    """Compute the DP gradient reduce-scatter can hide behind: the last micro-batch's backward,
    including the forward it recomputes. Megatron recomputes inside the backward
    (NVIDIA/Megatron-LM d98e8a6, ``megatron/core/tensor_parallel/random.py`` line 635,
    ``CheckpointFunction.backward`` reruns ``ctx.run_function`` before
    ``torch.autograd.backward``), and the gradient hooks that launch each bucket's reduction
    (``_make_backward_post_hook``, ``distributed_data_parallel.py`` lines 453–473) fire as
    that backward produces the gradients."""
    return backward_s + recompute_s


def fsdp_once_per_step_s(
    gather_s: float, scatter_s: float, forward_s: float, backward_window_s: float
) -> float:
    """Exposed FSDP traffic when a pipeline stage keeps its gathered weights for the whole
    step: one parameter all-gather, prefetched layer by layer under the first micro-batch's
    forward, and one gradient reduce-scatter under the last micro-batch's backward.

    Sources: torchtitan ``apply_fsdp`` sets ``reshard_after_forward = not pp_enabled``
    ("for PP, by default do not reshard after forward to avoid per-microbatch all-gathers,
    which can be expensive and non-overlapped"); PyTorch's pipelining stage
    (``torch/distributed/pipelining/stage.py``, ``backward_maybe_with_nosync``) calls
    ``set_reshard_after_backward(False)`` and ``set_requires_gradient_sync(False)`` on the
    FSDP module for every backward but the last; Llama 3 keeps FSDP weights gathered
    between forward and backward under PP (Dubey et al. 2024 Sec. 3.3.2).
    exposed = max(0, AG − forward) + max(0, RS − backward window).
    """
    return comms.exposed_after_overlap_s(gather_s, forward_s) + comms.exposed_after_overlap_s(
        scatter_s, backward_window_s
    )


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step, by part (every exposed kind reported separately)."""

    compute_s: float
    recompute_s: float
    tp_exposed_s: float
    cp_exposed_s: float
    ep_exposed_s: float
    pp_exposed_s: float
    dp_exposed_s: float
    fsdp_exposed_s: float
    bubble_s: float
    optimizer_s: float
    dp_raw_s: float  # before overlap, for reference
    compute_by_kind_s: dict[str, float]

    @property
    def total_s(self) -> float:
        return (
            self.compute_s + self.recompute_s + self.tp_exposed_s + self.cp_exposed_s
            + self.ep_exposed_s + self.pp_exposed_s + self.dp_exposed_s + self.fsdp_exposed_s
            + self.bubble_s + self.optimizer_s
        )  # fmt: skip

    def parts(self) -> dict[str, float]:
        """Named parts in seconds, in display order."""
        return {
            "compute": self.compute_s,
            "recompute": self.recompute_s,
            "TP/SP exposed": self.tp_exposed_s,
            "CP exposed": self.cp_exposed_s,
            "EP all-to-all exposed": self.ep_exposed_s,
            "PP send/recv exposed": self.pp_exposed_s,
            "DP grad RS + param AG exposed": self.dp_exposed_s,
            "FSDP gather/scatter exposed": self.fsdp_exposed_s,
            "pipeline bubble": self.bubble_s,
            "optimizer": self.optimizer_s,
        }


@dataclass(frozen=True)
class StepEstimate:
    """The digital twin of one step: layout, memory, time, FLOPs and utilisation."""

    model: str
    hardware: str
    cluster: str
    gpus: int
    layout: LayoutSpec
    seq_len: int
    memory: MemoryBreakdown
    time: StepTime
    model_flops_per_step: float
    hardware_flops_per_step: float
    peak_tflops: float

    @property
    def step_s(self) -> float:
        return self.time.total_s

    @property
    def tokens_per_step(self) -> int:
        return self.layout.global_batch * self.seq_len

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.step_s

    @property
    def tokens_per_s_per_gpu(self) -> float:
        return self.tokens_per_s / self.gpus

    @property
    def model_tflops_per_gpu(self) -> float:
        return self.model_flops_per_step / self.step_s / self.gpus / 1e12

    @property
    def hardware_tflops_per_gpu(self) -> float:
        return self.hardware_flops_per_step / self.step_s / self.gpus / 1e12

    @property
    def mfu(self) -> float:
        return self.model_tflops_per_gpu / self.peak_tflops

    @property
    def hfu(self) -> float:
        return self.hardware_tflops_per_gpu / self.peak_tflops

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def summary(self) -> dict[str, float | int | bool | str]:
        """Flat headline numbers (for JSON and tables)."""
        return {
            "step_s": self.step_s,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "model_tflops_per_gpu": self.model_tflops_per_gpu,
            "hardware_tflops_per_gpu": self.hardware_tflops_per_gpu,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "tokens_per_s": self.tokens_per_s,
            "memory_gb_per_gpu": self.memory.total_bytes / 1e9,
            "fits": self.fits,
        }


def roofline_s(flops: float, peak_tflops: float) -> float:
    """The least time ``flops`` can take on a GPU of ``peak_tflops``: F / peak. The step's
    compute is never below the model FLOPs' roofline, and compute + recompute never below the
    executed (hardware) FLOPs', so MFU ≤ HFU ≤ 1 hold by construction whatever the
    calibration or the FLOP convention (a causal kernel executes half the attention FLOPs
    the full-square convention counts, so without the floor a long-sequence run could
    report MFU above 1)."""
    return flops / (peak_tflops * 1e12)


def _tp_comm_per_mb_s(
    model: ModelSpec, layout: LayoutSpec, tokens: float, net: comms.Links, layers: float
) -> float:
    """TP/SP per micro-batch on the stage: per layer 4 collectives forward (all-gather before
    and reduce-scatter after attention and MLP; Korthikanti Sec. 4.2.2), 4 backward, 4 more
    under full recompute; each moves the b·s/cp·h·2-byte activation over tp ranks, for the
    ``layers`` of the slowest stage."""
    kind = "allgather" if layout.sequence_parallel else "allreduce"
    count = 4 if layout.sequence_parallel else 2
    passes = 3 if layout.recompute == "full" else 2
    one = comms.group_collective_s(kind, tokens * model.hidden * 2.0, layout.tp, 1, net)
    return layers * count * passes * one


def _cp_comm_per_layer_s(
    model: ModelSpec, layout: LayoutSpec, tokens: float, net: comms.Links
) -> float:
    """Context-parallel ring attention (Liu et al. 2023; Megatron CP): cp−1 steps, each passing
    the local K and V chunk forward, and K, V, dK, dV backward."""
    if model.attention == "mla":
        kv_width = model.heads * (
            model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim
        )
    else:
        kv_width = 2 * model.n_kv_heads * model.dim_head
    chunk = tokens * kv_width / vmax(1, vmin(layout.tp, model.n_kv_heads)) * 2.0
    stride = layout.tp
    one = comms.group_collective_s("allgather", chunk * layout.cp, layout.cp, stride, net)
    return 3.0 * one  # forward K,V; backward K,V and dK,dV


def _ep_comm_per_mb_s(
    model: ModelSpec, layout: LayoutSpec, tokens: float, net: comms.Links, layers: float
) -> float:
    """Expert all-to-all (GShard, Lepikhin et al. 2021): dispatch and combine in the forward
    and again in the backward (and the forward's again under full recompute), each moving the
    tokens·top_k·h·2 bytes of this GPU's share over the ep ranks (stride tp·cp)."""
    if not model.is_moe:
        return 0.0
    nbytes = tokens * model.top_k * model.hidden * 2.0 / layout.tp
    one = comms.group_collective_s("alltoall", nbytes, layout.ep, layout.tp * layout.cp, net)
    passes = 6 if layout.recompute == "full" else 4
    return model.moe_layers / model.layers * layers * passes * one


def pipeline_p2p_wait_s(
    model: ModelSpec, layout: LayoutSpec, tokens: float, bw_bytes_s: float, software: Software
) -> float:
    """Seconds per micro-batch a middle pipeline stage waits on point-to-point transfers in a
    stack whose schedule blocks on them (``Software.pipeline_p2p_waits``, w): w · v
    transfers of one micro-batch's b·s/cp·h·2-byte activation (or gradient) split over the
    t TP ranks, at ``bw_bytes_s``: w · v · (b·s·h·2 / (cp·t)) / bw. Zero without pipeline
    parallelism."""
    nbytes = tokens * model.hidden * 2.0 / layout.tp
    waits = software.pipeline_p2p_waits * layout.vpp
    return where(layout.pp > 1, waits * comms.p2p_s(nbytes, bw_bytes_s), 0.0)


def estimate_step(
    model: ModelSpec,
    layout: LayoutSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec | None = None,
    seq_len: int | None = None,
    *,
    causal_flops: bool = False,
    check: bool = True,
    software: Software = MODERN,
) -> StepEstimate:
    """Predict one optimizer step of ``model`` under ``layout`` on ``hardware``.

    ``causal_flops`` selects the FLOP-counting convention for MFU/HFU (see ``flops.py``);
    it changes the reported FLOPs, never the predicted time.
    """
    s = seq_len or model.seq_len
    software = software_with(software, layout)
    gpus = layout.gpus
    if check:
        check_layout(model, layout, hardware, gpus, cluster)
    net = comms.links(hardware, cluster)
    m = layout.microbatches
    tokens = layout.micro_batch * s / layout.cp
    passes = stage_pass_times(model, layout, hardware, s, software)

    # per micro-batch exposed communication
    layers = passes.stage_layers
    tp_mb = _tp_comm_per_mb_s(model, layout, tokens, net, layers)
    if software.tp_overlap:
        gemms = passes.by_kind_s["matmul"] + passes.by_kind_s["grouped_matmul"]
        tp_mb = vmax(TP_OVERLAP_RESIDUAL * tp_mb, tp_mb - gemms)
    cp_layer = _cp_comm_per_layer_s(model, layout, tokens, net)
    cp_mb = layers * comms.exposed_after_overlap_s(cp_layer, 3.5 * passes.attention_core_s)
    ep_mb = _ep_comm_per_mb_s(model, layout, tokens, net, layers)
    if software.ep_overlap:  # hidden behind another micro-batch's computation (DualPipe)
        ep_mb = comms.exposed_after_overlap_s(ep_mb, passes.total_s)

    split = params_per_gpu(model, layout)
    grad_bytes = grad_bytes_per_param(layout.precision, software)
    dense_n, dense_stride = split.dense_dp_group, layout.tp
    exp_n, exp_stride = split.expert_dp_group, layout.tp * layout.cp * layout.ep
    fsdp_mb = fsdp_step = 0.0
    dp_raw = dp_exposed = 0.0
    if layout.sharding == "fsdp":
        # without pipeline parallelism, every micro-batch: gather weights for forward and
        # backward (resharded after forward), reduce-scatter gradients
        gather = comms.group_collective_s(
            "allgather", split.dense * PARAM_GATHER_BYTES, dense_n, dense_stride, net
        ) + comms.group_collective_s(
            "allgather", split.expert * PARAM_GATHER_BYTES, exp_n, exp_stride, net
        )
        scatter = comms.group_collective_s(
            "allgather", split.dense * grad_bytes, dense_n, dense_stride, net
        ) + comms.group_collective_s("allgather", split.expert * grad_bytes, exp_n, exp_stride, net)
        raw_mb = 2 * gather + scatter
        # with pipeline parallelism the gathered weights stay for every micro-batch and the
        # gradients are reduce-scattered once, after the last backward (fsdp_once_per_step)
        once = where(layout.pp > 1, 1.0, 0.0)
        dp_raw = where(layout.pp > 1, gather + scatter, m * raw_mb)
        fsdp_mb = (1.0 - once) * comms.exposed_after_overlap_s(raw_mb, passes.total_s)
        window = dp_overlap_window_s(passes.backward_s, passes.recompute_s)
        fsdp_step = once * fsdp_once_per_step_s(gather, scatter, passes.forward_s, window)
    else:
        kind = "allreduce" if layout.sharding == "none" else "allgather"
        rs = comms.group_collective_s(
            kind, split.dense * grad_bytes, dense_n, dense_stride, net
        ) + comms.group_collective_s(kind, split.expert * grad_bytes, exp_n, exp_stride, net)
        ag = 0.0
        if layout.sharding == "zero1":
            ag = comms.group_collective_s(
                "allgather", split.dense * PARAM_GATHER_BYTES, dense_n, dense_stride, net
            ) + comms.group_collective_s(
                "allgather", split.expert * PARAM_GATHER_BYTES, exp_n, exp_stride, net
            )
        dp_raw = rs + ag
        tail = vmin(1.0, dp_bucket_params(dense_n) / vmax(1.0, split.total))
        overlap = 1.0 if software.dp_overlap else 0.0  # else reduced after the last micro-batch
        window = overlap * dp_overlap_window_s(passes.backward_s, passes.recompute_s)
        dp_exposed = comms.exposed_after_overlap_s(rs, window, tail * rs)
        dp_exposed += comms.exposed_after_overlap_s(ag, overlap * passes.forward_s, tail * ag)

    # pipeline
    accumulate_mb = grad_accumulation_s(split.total, hardware, software, layout.precision)
    stride = layout.tp * layout.cp * layout.dp  # the next stage's rank is this far away
    bw = where(stride < net.nvlink_domain, net.nvlink_bytes_s, net.nic_bytes_s)
    p2p_mb = pipeline_p2p_wait_s(model, layout, tokens, bw, software)
    per_mb = passes.total_s + tp_mb + cp_mb + ep_mb + fsdp_mb + accumulate_mb + p2p_mb
    bubble = comms.bubble_fraction(layout.pp, m, layout.vpp) * m * per_mb
    if software.pipeline_schedule == "dualpipe":
        bubble = comms.dualpipe_bubble_s(layout.pp, passes.forward_s, per_mb - passes.forward_s)
    act = tokens * model.hidden * 2.0 / (layout.tp if layout.sequence_parallel else 1)
    pp_exposed = 2 * layout.vpp * (layout.pp - 1) * comms.p2p_s(act, bw) + m * p2p_mb

    local_opt = split.dense / (dense_n if layout.sharding != "none" else 1) + split.expert / (
        exp_n if layout.sharding != "none" else 1
    )
    tokens_step = layout.global_batch * s
    model_flops = training_flops_per_token(model, s, causal=causal_flops) * tokens_step
    hardware_flops = (
        hardware_flops_per_token(model, layout.recompute, s, causal=causal_flops) * tokens_step
    )
    peak = hardware.peak(layout.precision)
    compute = vmax(
        m * (passes.forward_s + passes.backward_s + accumulate_mb),
        roofline_s(model_flops / gpus, peak),
    )
    recompute = vmax(m * passes.recompute_s, roofline_s(hardware_flops / gpus, peak) - compute)
    step = StepTime(
        compute_s=compute,
        recompute_s=recompute,
        tp_exposed_s=m * tp_mb,
        cp_exposed_s=m * cp_mb,
        ep_exposed_s=m * ep_mb,
        pp_exposed_s=pp_exposed,
        dp_exposed_s=dp_exposed,
        fsdp_exposed_s=m * fsdp_mb + fsdp_step,
        bubble_s=bubble,
        optimizer_s=optimizer_step_s(local_opt, hardware),
        dp_raw_s=dp_raw,
        compute_by_kind_s={
            k: m * (v + (accumulate_mb if k == "memory" else 0.0))
            for k, v in passes.by_kind_s.items()
        },
    )
    return StepEstimate(
        model=model.name,
        hardware=hardware.name,
        cluster=cluster.name if cluster else "",
        gpus=gpus,
        layout=layout,
        seq_len=s,
        memory=memory_per_gpu(model, layout, hardware, s, software),
        time=step,
        model_flops_per_step=model_flops,
        hardware_flops_per_step=hardware_flops,
        peak_tflops=peak,
    )
