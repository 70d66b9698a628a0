"""Search every layout of a model on up to a cluster's GPUs and rank them by time to train.

The space: tp (powers of two up to the NVLink domain, dividing the heads), pp (1 to
``MAX_PP``, stages even or uneven as Megatron-Core allows), vpp (every chunk count the stage
layers allow), cp (``CONTEXT_PARALLEL``), ep (every divisor of the experts that divides
dp·cp), dp and micro-batch (every pair that divides the global batch: gbs = mb·dp·m), the GPU
count tp·pp·cp·dp (any count up to the cluster; the rest are hot spares), sharding, recompute,
precision and the gradient-reduce dtype. The global batch is the user's hyperparameter: it
stays as given unless the user allows a range (then every 5-smooth batch in the range is
tried, and the change is reported). Candidates are ranked by the time to train a token
budget (= step time per token), never by tokens/s per GPU; within ``TIME_TIE`` of the
fastest, fewer GPUs rank first.

Evaluation is vectorised: the numeric degrees of all candidates of one (sharding, recompute,
precision, gradient dtype) group go through ``estimate_step`` as numpy arrays in one call
(``ArrayLayout``), the same code that plans one layout (``gigafactory.vec``). It is a
branch and bound: compute, recompute and the bubble of compute bound each candidate's step
from below (``compute.stage_total_s``), and a candidate already slower by them than the
``top``-th best found so far is not timed in full.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gigafactory.errors import LayoutError
from gigafactory.plan.comms import bubble_fraction
from gigafactory.plan.compute import MODERN, Software, stage_total_s
from gigafactory.plan.memory import memory_per_gpu
from gigafactory.plan.shard import nvlink_domain, uneven_stages
from gigafactory.plan.step import StepEstimate, estimate_step
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.layout import GRAD_REDUCE, RECOMPUTE, SHARDING, LayoutSpec
from gigafactory.spec.model import ModelSpec

CONTEXT_PARALLEL = (1, 2, 4, 8, 16)
#: Deepest pipeline searched (Llama 3 405B trained on pp16; Megatron runs reach pp64).
MAX_PP = 64
#: Default global batch in sequences: 4096 × 8k tokens ≈ 34M tokens per step, twice Llama 3
#: 405B's final 16M (an assumption for a cluster four times as large).
DEFAULT_GLOBAL_BATCH = 4096
#: Precisions searched when the user does not fix one (those the accelerator has a peak for).
SEARCH_PRECISIONS = ("bf16", "fp8")
#: Predicted times closer than this share are a tie, and the layout with fewer GPUs (fewer
#: GPU-hours, more hot spares) wins it: the model's own out-of-sample error is several
#: percent, so a 1% faster prediction on 30% more GPUs is not a real gain.
TIME_TIE = 0.01
_NUMERIC = ("tp", "pp", "vpp", "cp", "ep", "dp", "micro_batch", "global_batch")
_STAGES = ("first_stage_layers", "last_stage_layers")


@dataclass(frozen=True)
class ArrayLayout:
    """Many layouts at once: the numeric fields of ``LayoutSpec`` as numpy arrays (one
    element per candidate) and the categorical ones shared. The planner's functions read it
    exactly as they read a ``LayoutSpec``."""

    tp: np.ndarray
    pp: np.ndarray
    vpp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    dp: np.ndarray
    micro_batch: np.ndarray
    global_batch: np.ndarray
    first_stage_layers: np.ndarray
    last_stage_layers: np.ndarray
    sharding: str = "zero1"
    recompute: str = "none"
    precision: str = "bf16"
    grad_reduce: str = ""
    sequence_parallel: bool = True

    gpus = LayoutSpec.gpus
    microbatches = LayoutSpec.microbatches

    def stage_layers(self, layers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``LayoutSpec.stage_layers`` over the arrays, computed once per layout set."""
        cache = self.__dict__.setdefault("_stages", {})
        if layers not in cache:
            cache[layers] = LayoutSpec.stage_layers(self, layers)  # type: ignore[arg-type]
        return cache[layers]

    def __len__(self) -> int:
        return len(self.tp)

    def subset(self, keep: np.ndarray) -> ArrayLayout:
        """The candidates where ``keep`` holds."""
        return dataclasses.replace(self, **{f: getattr(self, f)[keep] for f in _NUMERIC + _STAGES})

    def layout(self, i: int) -> LayoutSpec:
        """The ``LayoutSpec`` of candidate ``i``."""
        values = {f: int(getattr(self, f)[i]) for f in _NUMERIC + _STAGES}
        cats = ("sharding", "recompute", "precision", "grad_reduce", "sequence_parallel")
        return LayoutSpec(**values, **{f: getattr(self, f) for f in cats})


@dataclass(frozen=True)
class SearchResult:
    """The layouts that train the budget soonest, best first, and what was searched.

    ``evaluated``: layouts searched (numeric degrees × categorical choices); ``bounded``:
    those ruled out by their compute time alone (slower than the ``top``-th best found so
    far before any communication is added); ``fitting``: of the rest, those that fit in HBM
    (and were timed in full). ``best_all_gpus``: the best layout that uses every GPU
    of the cluster (None when none fits), to compare with ``best[0]``."""

    best: list[StepEstimate]
    evaluated: int
    fitting: int
    seconds: float
    cluster_gpus: int
    requested_batch: int
    best_all_gpus: StepEstimate | None = None
    bounded: int = 0

    @property
    def considered(self) -> int:
        return self.evaluated

    @property
    def spare_gpus(self) -> int:
        return self.cluster_gpus - self.best[0].gpus if self.best else self.cluster_gpus


def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n``, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def smooth_batches(lo: int, hi: int) -> list[int]:
    """Global batches in [lo, hi] of the form 2^a·3^b·5^c: the ones with enough divisors to
    split over many dp·micro-batch shapes (a batch with a large prime factor has few)."""
    out = []
    for a in range(int(math.log2(max(hi, 1))) + 1):
        for b in range(int(math.log(max(hi, 1), 3)) + 1):
            for c in range(int(math.log(max(hi, 1), 5)) + 1):
                v = 2**a * 3**b * 5**c
                if lo <= v <= hi:
                    out.append(v)
    return sorted(set(out)) or [lo]


def _pipelines(model: ModelSpec) -> list[tuple[int, int, int, int]]:
    """(pp, vpp, first, last) for every pipeline Megatron-Core can build: even stages where
    pp·vpp divides the layers, otherwise uneven first/last stages (``uneven_stages``)."""
    out = [(1, 1, 0, 0)]
    for pp in range(2, min(MAX_PP, model.layers) + 1):
        for vpp in range(1, model.layers // pp + 1):
            if model.layers % (pp * vpp) == 0:
                out.append((pp, vpp, 0, 0))
            elif (split := uneven_stages(model.layers, pp, vpp)) is not None:
                out.append((pp, vpp, *split))
    return out


def _tensor_parallel(model: ModelSpec, domain: int) -> list[int]:
    kv = model.heads if model.attention == "mla" else model.n_kv_heads
    tps = [2**i for i in range(int(math.log2(max(1, min(domain, model.heads)))) + 1)]
    return [t for t in tps if model.heads % t == 0 and (kv % t == 0 or t % kv == 0)]


def enumerate_degrees(
    model: ModelSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec,
    gpus: int,
    batches: list[int],
    seq_len: int,
    exact_gpus: bool = False,
) -> dict[str, np.ndarray]:
    """Arrays of every valid numeric layout (one element per candidate) on at most ``gpus``
    GPUs (exactly ``gpus`` with ``exact_gpus``) with a global batch from ``batches``: the
    checks of ``LayoutSpec.check`` and ``check_layout`` applied to whole arrays."""
    tps = np.array(_tensor_parallel(model, nvlink_domain(hardware, cluster)))
    pipes = np.array(_pipelines(model))
    cps = np.array([c for c in CONTEXT_PARALLEL if c == 1 or seq_len % (2 * c) == 0])
    eps = np.array(divisors(model.experts) if model.is_moe else [1])
    shapes = np.array(
        [(b, dp, mb) for b in batches for dp in divisors(b) for mb in divisors(b // dp)]
    )
    # index grid over (tp, pipeline, cp, ep, batch shape), filtered step by step
    ti, pi, ci = (a.ravel() for a in np.meshgrid(
        np.arange(len(tps)), np.arange(len(pipes)), np.arange(len(cps)), indexing="ij"
    ))  # fmt: skip
    model_gpus = tps[ti] * pipes[pi, 0] * cps[ci]
    keep = model_gpus <= gpus
    ti, pi, ci, model_gpus = ti[keep], pi[keep], ci[keep], model_gpus[keep]
    # (shape, model-parallel group) pairs on the GPUs, shape-major
    total = shapes[:, 1, None] * model_gpus[None, :]
    si, gi = np.nonzero(total == gpus if exact_gpus else total <= gpus)
    pp, vpp = pipes[:, 0][pi][gi], pipes[:, 1][pi][gi]
    m = (shapes[:, 0] // (shapes[:, 2] * shapes[:, 1]))[si]
    keep = (vpp == 1) | (m % pp == 0)  # interleaving needs m a multiple of pp
    gi, si = gi[keep], si[keep]
    # (ep, candidate) pairs where ep divides dp·cp, ep-major
    ei, hi = np.nonzero((shapes[si, 1] * cps[ci[gi]])[None, :] % eps[:, None] == 0)
    g, s = gi[hi], si[hi]
    p = pi[g]
    pipe, shape = np.ascontiguousarray(pipes.T), np.ascontiguousarray(shapes.T)
    return {
        "tp": tps[ti[g]],
        "pp": pipe[0][p],
        "vpp": pipe[1][p],
        "first_stage_layers": pipe[2][p],
        "last_stage_layers": pipe[3][p],
        "cp": cps[ci[g]],
        "ep": eps[ei],
        "dp": shape[1][s],
        "micro_batch": shape[2][s],
        "global_batch": shape[0][s],
    }


def _choices(hardware: HardwareSpec, precision: str | None) -> list[tuple[str, str, str, str]]:
    precisions = [precision] if precision else [
        p for p in SEARCH_PRECISIONS if p in hardware.peak_tflops
    ]  # fmt: skip
    if not precisions or any(p not in hardware.peak_tflops for p in precisions):
        have = ", ".join(sorted(hardware.peak_tflops))
        raise LayoutError(f"{hardware.name} has no {precision} peak (it has {have})")
    grads = [g for g in GRAD_REDUCE if g]  # fp32 and bf16 explicitly
    return list(itertools.product(SHARDING, RECOMPUTE, precisions, grads))


def search_layouts(
    model: ModelSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec,
    gpus: int | None = None,
    global_batch: int = DEFAULT_GLOBAL_BATCH,
    precision: str | None = "bf16",
    top: int = 5,
    seq_len: int | None = None,
    *,
    batch_range: tuple[int, int] | None = None,
    software: Software = MODERN,
    exact_gpus: bool = False,
) -> SearchResult:
    """Rank every layout of ``model`` on up to ``gpus`` GPUs of ``cluster`` by the time to
    train (step seconds per token). ``precision`` None searches bf16 and fp8;
    ``batch_range`` (lo, hi) lets the global batch vary within it; ``exact_gpus`` keeps
    only layouts on exactly ``gpus`` GPUs (a scaling sweep's points)."""
    t0 = time.perf_counter()
    n = gpus or cluster.gpus
    s = seq_len or model.seq_len
    if top < 1:
        raise LayoutError(f"top must be at least 1, got {top}")
    if batch_range:
        lo, hi = batch_range
        if not 1 <= lo <= hi:
            raise LayoutError(f"batch range {lo}:{hi}: need 1 <= LO <= HI")
        batches = smooth_batches(lo, hi)
    else:
        batches = [global_batch]
    evaluated = bounded = fitting = 0
    # (seconds per token, index, candidates) of the best so far, and of the best on all GPUs
    pool: list[tuple[float, int, ArrayLayout]] = []
    pool_all: list[tuple[float, int, ArrayLayout]] = []
    choices = _choices(hardware, precision)
    # largest batch first: its layouts are usually the fastest per token, which tightens
    # the bound early (the result does not depend on the order)
    for batch in sorted(batches, reverse=True):
        degrees = enumerate_degrees(model, hardware, cluster, n, [batch], s, exact_gpus)
        if not len(degrees["tp"]):
            continue
        for prec in dict.fromkeys(p for _, _, p, _ in choices):
            # branch and bound: compute, recompute and the bubble of compute alone bound the
            # step from below (every other part is >= 0), so a layout already slower by them
            # than the top-th best found so far cannot enter the ranking. Without recompute
            # the bound holds for every recompute mode (recompute only adds), so it prunes
            # all three at once; each mode's own bound then prunes its survivors.
            rest = ArrayLayout(**degrees, recompute="none", precision=prec)
            n_prec = sum(c[2] == prec for c in choices)
            evaluated += len(rest) * n_prec
            keep = _within_bound(model, rest, hardware, s, software, pool, pool_all, top, n)
            bounded += int((~keep).sum()) * n_prec
            rest = rest.subset(keep)
            for recompute in RECOMPUTE:
                groups = [c for c in choices if c[1:3] == (recompute, prec)]
                if not len(rest) or not groups:
                    continue
                base = dataclasses.replace(rest, recompute=recompute)
                keep = _within_bound(model, base, hardware, s, software, pool, pool_all, top, n)
                bounded += int((~keep).sum()) * len(groups)
                if not keep.any():
                    continue
                base = base.subset(keep)
                for sharding, _, _, grad in groups:
                    cand = dataclasses.replace(base, sharding=sharding, grad_reduce=grad)
                    fits = np.asarray(memory_per_gpu(model, cand, hardware, s, software).fits)
                    fitting += int(fits.sum())
                    if not fits.any():
                        continue
                    cand = cand.subset(fits)  # only layouts that fit are timed
                    est = estimate_step(
                        model, cand, hardware, cluster, s, check=False, software=software
                    )
                    per_token = est.step_s / (cand.global_batch * s)
                    pool = _top(pool + _best(per_token, cand, top), top)
                    pool_all = _top(
                        pool_all + _best(np.where(cand.gpus == n, per_token, np.inf), cand, 1), 1
                    )
    best = [
        _scalar(model, c.layout(i), hardware, cluster, s, software) for _, i, c in _top(pool, top)
    ]
    full = _top(pool_all, 1)
    best_all = (
        _scalar(model, full[0][2].layout(full[0][1]), hardware, cluster, s, software)
        if full
        else None
    )
    return SearchResult(
        best, evaluated, fitting, time.perf_counter() - t0, n, global_batch, best_all, bounded
    )


def _within_bound(
    model: ModelSpec,
    cand: ArrayLayout,
    hardware: HardwareSpec,
    seq_len: int,
    software: Software,
    pool: list[tuple[float, int, Any]],
    pool_all: list[tuple[float, int, Any]],
    top: int,
    gpus: int,
) -> np.ndarray:
    """Candidates whose lower bound on seconds per token (m micro-batches of the slowest
    stage's compute and recompute, plus the bubble of that compute) can still enter the
    ranking, or be the best layout on all ``gpus``."""
    m = cand.microbatches
    stage = stage_total_s(model, cand, hardware, seq_len, software)
    floor = m * stage * (1 + bubble_fraction(cand.pp, m, cand.vpp))
    floor = floor / (cand.global_batch * seq_len)
    keep = floor <= _bound(pool, top) * (1 + TIME_TIE)
    return keep | ((cand.gpus == gpus) & (floor <= _bound(pool_all, 1)))


def _bound(pool: list[tuple[float, int, Any]], k: int) -> float:
    """The k-th best seconds per token found so far (inf until k are found)."""
    return max(x[0] for x in pool) if len(pool) >= k else np.inf


def _best(score: np.ndarray, cand: ArrayLayout, k: int) -> list[tuple[float, int, ArrayLayout]]:
    """The ``k`` fastest candidates, and the ``k`` with the fewest GPUs among those within
    ``TIME_TIE`` of the fastest (the ranking's tie window)."""
    finite = np.flatnonzero(np.isfinite(score))
    if not len(finite):
        return []
    t, g = score[finite], cand.gpus[finite]
    fastest = np.lexsort((g, t))[:k]
    near = np.flatnonzero(t <= t.min() * (1 + TIME_TIE))
    frugal = near[np.lexsort((t[near], g[near]))[:k]]
    picks = dict.fromkeys(int(finite[j]) for j in np.concatenate([fastest, frugal]))
    return [(float(score[i]), i, cand) for i in picks]


def _top(pool: list[tuple[float, int, Any]], k: int) -> list[tuple[float, int, Any]]:
    """Best first: layouts within ``TIME_TIE`` of the fastest by fewest GPUs, then the rest
    by time."""
    if not pool:
        return []
    window = min(x[0] for x in pool) * (1 + TIME_TIE)

    def key(x: tuple[float, int, Any]) -> tuple[int, float, float]:
        gpus = float(x[2].gpus[x[1]])
        return (0, gpus, x[0]) if x[0] <= window else (1, x[0], gpus)

    return sorted(pool, key=key)[:k]


def _scalar(
    model: ModelSpec,
    layout: LayoutSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec,
    seq_len: int,
    software: Software,
) -> StepEstimate:
    return estimate_step(model, layout, hardware, cluster, seq_len, software=software)


def batch_change(result: SearchResult) -> str:
    """How the best layout's global batch differs from the request ('' when it does not)."""
    if not result.best or result.best[0].layout.global_batch == result.requested_batch:
        return ""
    got = result.best[0].layout.global_batch
    return f"global batch {result.requested_batch} → {got} ({got / result.requested_batch:+.0%})"
