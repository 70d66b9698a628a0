"""Search the valid layouts of a model on a cluster and rank them by throughput.

Enumerates tp (up to the NVLink domain), pp and vpp (dividing the layers), cp, ep
(dividing the experts and dp·cp), micro-batch, and for each the lightest sharding and
recompute that fit in HBM (more sharding or recompute only costs time, so heavier choices
are tried only when lighter ones do not fit). The global batch of each candidate is the
smallest multiple of micro_batch·dp at or above the requested batch, and a candidate whose
batch would exceed ``MAX_BATCH_GROWTH`` × the request is refused: beyond the critical batch
size (McCandlish et al. 2018) more data parallelism buys no training progress. Candidates are
ranked by tokens per second, not by step time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gigafactory.errors import LayoutError
from gigafactory.plan.memory import memory_per_gpu
from gigafactory.plan.shard import check_layout, nvlink_domain
from gigafactory.plan.step import StepEstimate, estimate_step
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec

SHARDINGS = ("zero1", "fsdp")
RECOMPUTES = ("none", "selective", "full")
MICRO_BATCHES = (1, 2, 4)
CONTEXT_PARALLEL = (1, 2, 4, 8)
VPP = (1, 2, 4)
MAX_BATCH_GROWTH = 2.0
#: Default global batch in sequences: 4096 × 8k tokens ≈ 34M tokens per step, twice Llama 3
#: 405B's final 16M (an assumption for a cluster four times as large).
DEFAULT_GLOBAL_BATCH = 4096


def _powers_of_two_dividing(n: int, limit: int) -> list[int]:
    return [d for d in (2**i for i in range(int(math.log2(max(1, limit))) + 1)) if n % d == 0]


def _divisors(n: int, limit: int) -> list[int]:
    return [d for d in range(1, min(n, limit) + 1) if n % d == 0]


@dataclass(frozen=True)
class SearchResult:
    """The fastest layouts that fit, best first, and how many layouts were considered."""

    best: list[StepEstimate]
    considered: int
    valid: int
    fitting: int


def round_batch(target: int, unit: int) -> int:
    """The smallest multiple of ``unit`` at or above ``target`` (global batch in sequences)."""
    return max(unit, math.ceil(target / unit) * unit)


def search_layouts(
    model: ModelSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec,
    gpus: int | None = None,
    global_batch: int = DEFAULT_GLOBAL_BATCH,
    precision: str = "bf16",
    top: int = 5,
    seq_len: int | None = None,
) -> SearchResult:
    """Rank the layouts of ``model`` on ``gpus`` GPUs of ``cluster`` by tokens/s per GPU."""
    n = gpus or cluster.gpus
    s = seq_len or model.seq_len
    domain = nvlink_domain(hardware, cluster)
    considered = valid = fitting = 0
    found: list[StepEstimate] = []
    eps = _divisors(model.experts, model.experts) if model.is_moe else [1]
    for tp in _powers_of_two_dividing(n, min(domain, model.heads)):
        for pp in _divisors(model.layers, model.layers):
            for cp in CONTEXT_PARALLEL:
                if n % (tp * pp * cp) or (cp > 1 and s % (2 * cp)):
                    continue
                dp = n // (tp * pp * cp)
                for vpp in VPP if pp > 1 else (1,):
                    for ep in eps:
                        for mb in MICRO_BATCHES:
                            considered += 1
                            est = _best_fitting(
                                model, hardware, cluster, n, s, precision,
                                tp, pp, vpp, cp, ep, dp, mb, global_batch,
                            )  # fmt: skip
                            if est is None:
                                continue
                            valid += 1
                            if est.fits:
                                fitting += 1
                                found.append(est)
    found.sort(key=lambda e: -e.tokens_per_s_per_gpu)
    return SearchResult(found[:top], considered, valid, fitting)


def _best_fitting(
    model: ModelSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec,
    gpus: int,
    seq_len: int,
    precision: str,
    tp: int,
    pp: int,
    vpp: int,
    cp: int,
    ep: int,
    dp: int,
    mb: int,
    target_batch: int,
) -> StepEstimate | None:
    """The lightest (sharding, recompute) that fits for these degrees; the last tried when
    none fits; None when the degrees are invalid."""
    unit = mb * dp * (pp if vpp > 1 else 1)
    gbs = round_batch(target_batch, unit)
    if gbs > MAX_BATCH_GROWTH * target_batch:
        return None
    last = None
    for sharding in SHARDINGS:
        for recompute in RECOMPUTES:
            layout = LayoutSpec(
                tp=tp, pp=pp, vpp=vpp, cp=cp, ep=ep, dp=dp, sharding=sharding,
                micro_batch=mb, global_batch=gbs, recompute=recompute, precision=precision,
            )  # fmt: skip
            if last is None:
                try:
                    check_layout(model, layout, hardware, gpus, cluster)
                except LayoutError:
                    return None
            last = layout
            if memory_per_gpu(model, layout, hardware, seq_len).fits:
                return estimate_step(model, layout, hardware, cluster, seq_len, check=False)
    return estimate_step(model, last, hardware, cluster, seq_len, check=False) if last else None
