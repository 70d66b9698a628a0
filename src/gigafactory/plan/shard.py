"""How a layout splits a model: parameters per GPU, tokens per micro-batch, and the checks
beyond ``LayoutSpec.check`` that need the accelerator (TP inside the NVLink domain)."""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.errors import LayoutError
from gigafactory.plan.params import (
    attention_params,
    embedding_params,
    layer_norms,
    mlp_params,
    norm_params,
    router_params,
)
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.vec import vmax, where


def nvlink_domain(hardware: HardwareSpec, cluster: ClusterSpec | None = None) -> int:
    """GPUs that share one NVLink (scale-up) domain: the cluster's override or the device's."""
    if cluster is not None and cluster.nvlink_domain:
        return cluster.nvlink_domain
    return hardware.nvlink_domain


def check_layout(
    model: ModelSpec,
    layout: LayoutSpec,
    hardware: HardwareSpec,
    gpus: int | None = None,
    cluster: ClusterSpec | None = None,
) -> None:
    """``LayoutSpec.check`` plus what needs the accelerator: tp (and tp·ep when experts are
    split over NVLink) must fit in one NVLink domain, since TP collectives sit on the
    critical path of every layer (Narayanan et al. 2021, Sec. 3.3)."""
    layout.check(model, gpus)
    domain = nvlink_domain(hardware, cluster)
    if layout.tp > domain:
        raise LayoutError(
            f"tp={layout.tp} exceeds the NVLink domain of {domain} GPUs on {hardware.name}; "
            f"use tp <= {domain} and more pp or dp"
        )
    if layout.precision not in hardware.peak_tflops:
        have = ", ".join(sorted(hardware.peak_tflops))
        raise LayoutError(
            f"{hardware.name} has no {layout.precision} peak (it has {have}); "
            "choose another --precision"
        )


@dataclass(frozen=True)
class ParamSplit:
    """Parameters held by one GPU of the first pipeline stage (the one that peaks)."""

    dense: float  # replicated over the data-parallel group: attention, norms, dense FFN, emb
    expert: float  # routed experts, split ep ways (and tp ways inside each expert)
    dense_dp_group: int  # GPUs the dense share is sharded over under zero1/fsdp: dp·cp
    expert_dp_group: int  # and the experts: dp·cp/ep

    @property
    def total(self) -> float:
        return self.dense + self.expert


def layers_per_stage(model: ModelSpec, layout: LayoutSpec) -> float:
    """Transformer layers on the first pipeline stage (all its vpp chunks together): L / pp,
    or the uneven first stage's count (``LayoutSpec.stage_layers``)."""
    return layout.stage_layers(model.layers)[0]


def uneven_stages(layers: int, pp: int, vpp: int = 1) -> tuple[int, int] | None:
    """(first, last) stage layers for a model whose layers pp·vpp does not divide, the way
    126-layer Llama 3 405B runs on 16 stages (Dubey et al. 2024 Sec. 3.3.2: the first and
    last stages hold one layer fewer): every middle stage takes ⌈L/(pp·vpp)⌉·vpp layers and
    the first and last split the rest, in multiples of vpp, as evenly as they can. None
    when no such split exists (or none is needed)."""
    if pp < 2 or layers % (pp * vpp) == 0:
        return None
    mid = -(-layers // (pp * vpp)) * vpp
    rest = layers - (pp - 2) * mid
    first = (rest // (2 * vpp)) * vpp
    last = rest - first
    if first < vpp or last < vpp or last > mid or last % vpp:
        return None
    return first, last


def params_per_gpu(model: ModelSpec, layout: LayoutSpec) -> ParamSplit:
    """Megatron-style split of the first stage: layers/pp of every layer kind (a uniform
    share of dense and MoE layers), weight matrices /tp, routed experts /ep more, plus the
    input embedding /tp (vocab-parallel; Shoeybi et al. 2019). Norm weights and the router
    are replicated on every tp rank (Megatron-Core, and the trainer's tensor-parallel plan).
    With pp = 1 an untied head and the final norm sit on the same GPU (their share is in
    ``embedding_params``); with pp > 1 they live on the last stage."""
    t, p = layout.tp, layout.pp
    share = layers_per_stage(model, layout) / model.layers  # 1/pp for even stages
    split_per_layer = attention_params(model)
    dense_layers = model.n_dense_layers * mlp_params(model, model.ffn_width)
    moe_shared = model.moe_layers * model.shared_experts * mlp_params(model, model.moe_ffn)
    replicated = model.layers * layer_norms(model) + model.moe_layers * router_params(model)
    dense = (model.layers * split_per_layer + dense_layers + moe_shared) * share / t
    dense = dense + replicated * share
    final_norm = norm_params(model)
    emb = embedding_params(model) - final_norm
    if not model.tied_embeddings:  # the head lives on the last stage
        emb = emb - where(p > 1, model.vocab * model.hidden, 0)
    dense = dense + where(p > 1, 0, final_norm)
    dense += emb / t
    expert = model.moe_layers * model.experts * mlp_params(model, model.moe_ffn)
    expert *= share / (t * layout.ep)
    dp_group = layout.dp * layout.cp
    return ParamSplit(dense, expert, dp_group, vmax(1, dp_group // layout.ep))


def tokens_per_microbatch(model: ModelSpec, layout: LayoutSpec, seq_len: int | None = None) -> int:
    """Tokens one GPU's pipeline sees per micro-batch: b·s/cp (TP ranks share the same)."""
    s = seq_len or model.seq_len
    return layout.micro_batch * s // layout.cp
