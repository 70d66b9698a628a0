"""Will the run fit? The planner's memory model, asked before the trainer allocates anything.

A model too large for the device would otherwise be killed by the kernel's OOM killer (on a
CPU) or die in the CUDA allocator after minutes of set-up; instead the run is refused with the
planner's breakdown of what each rank would hold (weights, gradients, optimizer states,
activations; ``gigafactory.plan.memory``) next to the memory the device has free.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from gigafactory.plan.memory import GB, MemoryBreakdown, memory_breakdown
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.train.errors import TrainConfigError


class DoesNotFitError(TrainConfigError):
    """The planner predicts more memory per rank than the device has free."""


def free_bytes(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> float:
    """Memory this rank may use: free device memory on a GPU; on a CPU, the host's available
    memory (``MemAvailable``) shared by the ranks on this host (``LOCAL_WORLD_SIZE``)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    for line in meminfo.read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / ranks
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return pages / ranks


def predicted_memory(
    spec: ModelSpec, layout: LayoutSpec, seq: int, capacity_bytes: float
) -> MemoryBreakdown:
    """The planner's per-rank memory for this layout (no reserve: ``capacity_bytes`` is what is
    free now, after the runtime's own allocations)."""
    return memory_breakdown(spec, layout, capacity_bytes, 0.0, seq)


def check_fits(
    spec: ModelSpec, layout: LayoutSpec, seq: int, device: torch.device, free: float | None = None
) -> MemoryBreakdown:
    """The breakdown if the run fits in ``free`` bytes (default: what ``device`` has free),
    else ``DoesNotFitError`` with the breakdown and what to change."""
    mem = predicted_memory(spec, layout, seq, free_bytes(device) if free is None else free)
    if mem.fits:
        return mem
    parts = ", ".join(
        f"{name} {value / GB:,.1f} GB"
        for name, value in (
            ("weights", mem.weights_bytes),
            ("gradients", mem.gradients_bytes),
            ("optimizer", mem.optimizer_bytes),
            ("activations", mem.activations_bytes),
        )
    )
    raise DoesNotFitError(
        f"{spec.name} does not fit: each of the {layout.dp} rank(s) would need "
        f"{mem.total_bytes / GB:,.1f} GB ({parts}; planner's model, {layout.precision}) but "
        f"{device.type} has {mem.capacity_bytes / GB:,.1f} GB free; use more ranks (FSDP "
        "shards weights, gradients and optimizer), a smaller --model, or lower --batch/--seq"
    )
