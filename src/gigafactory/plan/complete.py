"""Complete the fields a user left blank in a layout, and say how each was completed.

A layout given by its degrees (``gigafactory plan --tp 8 --pp 4``) still needs a micro-batch,
interleaving, recompute mode, sharding and global batch. Nothing blank is read silently as 1
or "none": a blank with a documented default takes it (sharding: the planner's
distributed optimizer, Megatron-Core's ``--use-distributed-optimizer`` as every packaged
Megatron-Core row ran it; global batch: ``search.DEFAULT_GLOBAL_BATCH``), and the others are
searched — the micro-batch (dividing the per-replica batch), the interleaved chunks per stage
(dividing the stage's layers) and the lightest recompute mode that fits, fastest first
(time per step, the batch being fixed). Every completion comes back as a note.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gigafactory.errors import LayoutError
from gigafactory.plan.compute import MODERN, Software
from gigafactory.plan.shard import uneven_stages
from gigafactory.plan.step import StepEstimate, estimate_step
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec
from gigafactory.spec.layout import RECOMPUTE, LayoutSpec
from gigafactory.spec.model import ModelSpec

#: Micro-batch sizes tried for a blank ``micro_batch`` (each must divide the per-replica batch).
MICRO_BATCHES = (1, 2, 4, 8)
#: Sharding of a blank ``sharding``: Megatron's distributed optimizer.
DEFAULT_SHARDING = "zero1"


@dataclass(frozen=True)
class Completion:
    """The completed layout's estimate and, per field the user left blank, how it was set."""

    estimate: StepEstimate
    notes: dict[str, str]


def _vpp_choices(layers_per_stage: int, pp: int) -> list[int]:
    if pp == 1:
        return [1]
    return [v for v in range(1, layers_per_stage + 1) if layers_per_stage % v == 0]


def complete_layout(
    model: ModelSpec,
    hardware: HardwareSpec,
    cluster: ClusterSpec | None,
    given: dict[str, Any],
    seq_len: int | None = None,
    software: Software = MODERN,
) -> Completion:
    """The fastest completion of ``given`` (``LayoutSpec`` fields; a field absent or None is
    blank) that fits in memory, or the lightest if none fits. ``given`` must hold the
    degrees (tp, pp, cp, ep, dp) and whatever else the user set."""
    fields = {k: v for k, v in given.items() if v is not None}
    blank = {f for f in ("micro_batch", "vpp", "recompute", "sharding", "global_batch")}
    blank -= set(fields)
    base = dict(fields)
    base.setdefault("sharding", DEFAULT_SHARDING)
    if "global_batch" in blank:
        from gigafactory.plan.search import DEFAULT_GLOBAL_BATCH

        base["global_batch"] = DEFAULT_GLOBAL_BATCH
    per_replica = base["global_batch"] // base["dp"]
    pp = base.get("pp", 1)
    stage = -(-model.layers // pp)
    mbs = [m for m in MICRO_BATCHES if per_replica % m == 0] if "micro_batch" in blank else []
    vpps = _vpp_choices(stage, pp) if "vpp" in blank else []
    modes = RECOMPUTE if "recompute" in blank else (base.get("recompute", "none"),)
    best: tuple[tuple[bool, float], StepEstimate] | None = None
    refused = LayoutError("no completion of the blank fields can run this layout")
    for mb in mbs or [base.get("micro_batch", 1)]:
        for vpp in vpps or [base.get("vpp", 1)]:
            stages = {}
            if not (base.get("first_stage_layers") or base.get("last_stage_layers")):
                first, last = uneven_stages(model.layers, pp, vpp) or (0, 0)
                stages = {"first_stage_layers": first, "last_stage_layers": last}
            for mode in modes:  # lightest first: a heavier mode only costs time
                fill = {"micro_batch": mb, "vpp": vpp, "recompute": mode, **stages}
                try:
                    layout = LayoutSpec(**{**base, **fill})
                    est = estimate_step(
                        model, layout, hardware, cluster, seq_len, software=software
                    )
                except LayoutError as exc:  # this completion cannot run (e.g. stages vs vpp)
                    refused = exc
                    break
                key = (not est.fits, est.step_s)
                if best is None or key < best[0]:
                    best = (key, est)
                if est.fits:
                    break
    if best is None:  # every completion refused: the layout's own reason says what to change
        raise refused
    est = best[1]
    how = {
        "micro_batch": f"{est.layout.micro_batch} (searched: fastest that fits)",
        "vpp": f"{est.layout.vpp} (searched: fastest that fits)",
        "recompute": f"{est.layout.recompute} (searched: lightest that fits)",
        "sharding": f"{est.layout.sharding} (default: Megatron's distributed optimizer)",
        "global_batch": f"{est.layout.global_batch} (default)",
    }
    return Completion(est, {k: v for k, v in how.items() if k in blank})
