"""Communication time of one training step, per kind, and how much of it stays exposed.

Collectives use the bandwidth term of the ring algorithms (Patarasuk & Yuan 2009; Thakur et
al. 2005), the form NCCL's ``nccl-tests`` report as bus bandwidth, plus a latency term per
hop as NCCL's own tuner counts them (``latency_s``): all-reduce on its double binary tree
(2·log2 n hops), reduce-scatter and all-gather on rings (n−1 hops):

* all-reduce of B bytes over n ranks: 2(n−1)/n · B / bw
* reduce-scatter or all-gather of a B-byte buffer: (n−1)/n · B / bw
* all-to-all where each rank holds B bytes: (n−1)/n · B / bw
* point-to-point: B / bw

Bandwidths: NVLink per direction × the accelerator's ``nvlink`` efficiency (NCCL reaches
about 80% of NVLink line rate); scale-out: the NIC line rate × the cluster's
``fabric_efficiency`` (Spectrum-X 95%, standard Ethernet ~60%). A group spread over several
nodes runs hierarchically: the intra-node part on NVLink, then each GPU carries 1/g of the
buffer over its own NIC (rail-optimised fabrics; Jeaugey, NCCL, GTC 2019).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gigafactory.plan.shard import nvlink_domain
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.vec import vmax, vmin, where

#: One NCCL hop's latency: NVLink ~2 µs, scale-out ~8 µs (nccl-tests small-message times).
NVLINK_LATENCY_S = 2e-6
FABRIC_LATENCY_S = 8e-6
#: NCCL's achieved share of NVLink line rate when the accelerator does not state its own.
DEFAULT_NVLINK_EFFICIENCY = 0.8


def ring_allreduce_s(nbytes: float, n: int, bw_bytes_s: float) -> float:
    """Ring all-reduce: 2(n−1)/n · B / bw (reduce-scatter then all-gather)."""
    return where(n > 1, 2.0 * (n - 1) / n * nbytes / bw_bytes_s, 0.0)


def ring_allgather_s(nbytes: float, n: int, bw_bytes_s: float) -> float:
    """Ring all-gather (or reduce-scatter) of a B-byte full buffer: (n−1)/n · B / bw."""
    return where(n > 1, (n - 1) / n * nbytes / bw_bytes_s, 0.0)


ring_reduce_scatter_s = ring_allgather_s


def all_to_all_s(nbytes_per_rank: float, n: int, bw_bytes_s: float) -> float:
    """All-to-all where each rank sends (n−1)/n of its B bytes away: (n−1)/n · B / bw."""
    return where(n > 1, (n - 1) / n * nbytes_per_rank / bw_bytes_s, 0.0)


def p2p_s(nbytes: float, bw_bytes_s: float) -> float:
    """Point-to-point send: B / bw."""
    return nbytes / bw_bytes_s


def latency_s(n: int, hop_s: float, kind: str = "allreduce") -> float:
    """Latency of one collective over n ranks, in hops as NCCL's tuner counts them
    (NVIDIA/nccl 5067397, ``src/graph/tuning.cc``, ``ncclTopoTuneModel``, lines 289–290 and
    418): all-reduce runs on the
    double binary tree at scale, 2·log2(n) hops (the ``NCCL_ALGO_TREE`` latency,
    ``2 * (... + log2i(nNodes) * interLat)``); reduce-scatter and all-gather have no tree
    algorithm and run on the ring, ``nsteps = nRanks - 1`` hops (``coll ==
    ncclFuncReduceScatter || coll == ncclFuncAllGather ? nRanks - 1``); all-to-all is a
    batch of concurrent point-to-point sends and keeps the tree-like 2·log2(n)."""
    hops = n - 1 if kind == "allgather" else 2.0 * np.log2(vmax(n, 1))
    return where(n > 1, hops * hop_s, 0.0)


@dataclass(frozen=True)
class Links:
    """Effective bandwidths (bytes/s) one GPU sees, and how many GPUs share NVLink."""

    nvlink_bytes_s: float
    nic_bytes_s: float
    nvlink_domain: int
    gpus_per_node: int


def links(hardware: HardwareSpec, cluster: ClusterSpec | None) -> Links:
    """NVLink: nvlink_gbs·1e9 × efficiency. NIC: Gb/s / 8 × the fabric's efficiency."""
    nv_eff = hardware.efficiency.get("nvlink", DEFAULT_NVLINK_EFFICIENCY)
    nic_gbps = (cluster.nic_gbps if cluster and cluster.nic_gbps else 0) or hardware.nic_gbps
    fab = cluster.fabric_efficiency if cluster else 0.9
    domain = nvlink_domain(hardware, cluster)
    per_node = cluster.gpus_per_node if cluster else hardware.nvlink_domain
    return Links(hardware.nvlink_gbs * 1e9 * nv_eff, nic_gbps / 8 * 1e9 * fab, domain, per_node)


def group_collective_s(kind: str, nbytes: float, n: int, stride: int, net: Links) -> float:
    """A collective over n ranks placed ``stride`` GPUs apart (Megatron rank order: tp
    innermost, then cp, dp/ep, pp outermost). Ranks inside one NVLink domain use NVLink;
    otherwise hierarchical: g = domain/stride ranks per domain on NVLink, then 1/g of the
    buffer per GPU over the NICs among n/g domains.

    ``kind``: ``allreduce``, ``allgather`` (= reduce-scatter) or ``alltoall``.
    """
    g = vmax(1, vmin(n, net.nvlink_domain // vmax(1, stride)))
    inside = g >= n
    if kind == "alltoall":
        on_nvlink = all_to_all_s(nbytes, n, net.nvlink_bytes_s) + latency_s(
            n, NVLINK_LATENCY_S, kind
        )
        # a share (g−1)/n stays on NVLink, (n−g)/n crosses the fabric; both run at once
        intra = nbytes * (g - 1) / n / net.nvlink_bytes_s
        inter = nbytes * (n - g) / n / net.nic_bytes_s
        across = vmax(intra, inter) + latency_s(n, FABRIC_LATENCY_S, kind)
        return where(n > 1, where(inside, on_nvlink, across), 0.0)
    coll = ring_allreduce_s if kind == "allreduce" else ring_allgather_s
    on_nvlink = coll(nbytes, n, net.nvlink_bytes_s) + latency_s(n, NVLINK_LATENCY_S, kind)
    outer = n // g
    intra = coll(nbytes, g, net.nvlink_bytes_s)
    inter = coll(nbytes / g, outer, net.nic_bytes_s)
    across = (
        intra + inter + latency_s(g, NVLINK_LATENCY_S, kind)
        + latency_s(outer, FABRIC_LATENCY_S, kind)
    )  # fmt: skip
    return where(n > 1, where(inside, on_nvlink, across), 0.0)


def exposed_after_overlap_s(comm_s: float, window_s: float, floor_s: float = 0.0) -> float:
    """Communication left on the critical path when it runs beside ``window_s`` of compute:
    max(floor, comm − window) (e.g. Megatron's ``overlap_grad_reduce`` hides the gradient
    reduce-scatter behind the last micro-batch's backward, all but the last bucket)."""
    return where(comm_s > 0, vmax(floor_s, comm_s - window_s, 0.0), 0.0)


def bubble_fraction(pp: int, microbatches: int, vpp: int = 1) -> float:
    """Pipeline bubble over ideal compute: (p−1)/m for 1F1B (Narayanan et al. 2021 Sec. 2.2),
    (p−1)/(v·m) with v interleaved chunks per stage (Sec. 2.2.2)."""
    return where(pp > 1, (pp - 1) / (vpp * vmax(microbatches, 1)), 0.0)


def dualpipe_bubble_s(pp: Any, forward_s: Any, backward_s: Any) -> Any:
    """DualPipe's pipeline bubble (DeepSeek-V3 report Table 2): (PP/2 − 1)·(F&B + B − 3W),
    with F&B the time of an overlapped forward-and-backward chunk pair (≈ F + B when both
    are compute-bound), B the full backward and W its weight-gradient half (the backward's
    GEMMs split evenly between input and weight gradients, 2mnk each): W = B/2. Seconds per
    step for one micro-batch's ``forward_s`` and ``backward_s`` on one stage."""
    weight_s = backward_s / 2.0
    per_pair = vmax(0.0, forward_s + 2.0 * backward_s - 3.0 * weight_s)
    return where(pp > 1, (pp / 2.0 - 1.0) * per_pair, 0.0)
