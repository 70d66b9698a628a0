"""The same model and token budget planned on several clusters, side by side, and how each
scales: the best layout, step time, MFU, days, goodput after failures, power, energy and cost
per cluster, and a sweep of GPU counts (days, MFU, goodput against the number of GPUs).

Every point is the planner's own search (``search_layouts``) and run totals
(``estimate_run``); nothing here models time or failures itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.errors import LayoutError
from gigafactory.plan.run import DEFAULT_TOKENS, RunEstimate, estimate_run
from gigafactory.plan.search import DEFAULT_GLOBAL_BATCH, SearchResult, search_layouts
from gigafactory.plan.step import StepEstimate
from gigafactory.reliability import ReliabilityScenario
from gigafactory.spec import ClusterSpec, ModelSpec, load_hardware
from gigafactory.spec._fields import positive_int

DEFAULT_CLUSTERS = ("colossus", "meta-24k")
SMALLEST_SWEEP_GPUS = 1024


@dataclass(frozen=True)
class ClusterPlan:
    """The fastest layout of the model on one cluster and the whole run at its throughput."""

    cluster: str
    hardware: str
    gpus: int
    step: StepEstimate
    run: RunEstimate
    considered: int
    fitting: int
    fastest: list[StepEstimate]


@dataclass(frozen=True)
class ScalePoint:
    """One GPU count of a cluster's sweep; ``fits`` False when no layout fits there."""

    cluster: str
    gpus: int
    fits: bool
    days: float = 0.0  # failure-free
    wall_days: float = 0.0  # after failures
    mfu: float = 0.0
    goodput: float = 0.0
    power_mw: float = 0.0


@dataclass(frozen=True)
class Comparison:
    model: str
    tokens: float
    global_batch: int
    plans: list[ClusterPlan]
    scaling: list[ScalePoint]

    def fastest_size(self, cluster: str) -> ScalePoint:
        """The swept GPU count of ``cluster`` with the fewest wall-clock days."""
        fits = [s for s in self.scaling if s.cluster == cluster and s.fits]
        return min(fits, key=lambda s: s.wall_days)


def plan_on_cluster(
    model: ModelSpec,
    cluster: ClusterSpec,
    gpus: int = 0,
    global_batch: int = DEFAULT_GLOBAL_BATCH,
    precision: str = "bf16",
    tokens: float = DEFAULT_TOKENS,
    reliability: ReliabilityScenario | None = None,
    top: int = 5,
) -> tuple[SearchResult, RunEstimate]:
    """Search ``model`` on ``gpus`` GPUs of ``cluster`` (default all) and total the best run."""
    hardware = load_hardware(cluster.gpu)
    n = gpus or cluster.gpus
    sized = cluster.with_gpus(n) if n != cluster.gpus else cluster
    found = search_layouts(model, hardware, sized, n, global_batch, precision, top)
    if not found.best:
        raise LayoutError(
            f"no layout of {model.name} fits on {n:,} × {hardware.name} ({cluster.name}) with a "
            f"global batch near {global_batch}; raise the batch or add GPUs"
        )
    return found, estimate_run(found.best[0], sized, hardware, tokens, reliability)


def sweep_sizes(cluster: ClusterSpec, points: int = 6) -> list[int]:
    """The cluster's size and the powers of two below it (at least 1,024), largest first."""
    positive_int("compare", "points", points)
    sizes = [cluster.gpus]
    size = 2 ** (cluster.gpus.bit_length() - 1)
    while len(sizes) < points and size >= SMALLEST_SWEEP_GPUS:
        if size < cluster.gpus and size % cluster.gpus_per_node == 0:
            sizes.append(size)
        size //= 2
    return sizes


def compare_clusters(
    model: ModelSpec,
    clusters: list[ClusterSpec],
    tokens: float = DEFAULT_TOKENS,
    global_batch: int = DEFAULT_GLOBAL_BATCH,
    precision: str = "bf16",
    reliability: ReliabilityScenario | None = None,
    points: int = 6,
) -> Comparison:
    """Plan ``model`` on each cluster, then sweep each cluster's GPU count."""
    if not clusters:
        raise LayoutError("name at least one cluster to compare")
    plans, scaling = [], []
    for cluster in clusters:
        for n in sweep_sizes(cluster, points):
            try:
                found, run = plan_on_cluster(
                    model, cluster, n, global_batch, precision, tokens, reliability
                )
            except LayoutError:
                scaling.append(ScalePoint(cluster.name, n, fits=False))
                continue
            best = found.best[0]
            scaling.append(
                ScalePoint(
                    cluster.name,
                    n,
                    True,
                    run.days,
                    run.wall_days,
                    best.mfu,
                    run.goodput,
                    run.power_mw,
                )
            )
            if n == cluster.gpus:
                plans.append(
                    ClusterPlan(
                        cluster.name,
                        best.hardware,
                        n,
                        best,
                        run,
                        found.considered,
                        found.fitting,
                        found.best,
                    )
                )
        if not plans or plans[-1].cluster != cluster.name:
            raise LayoutError(
                f"no layout of {model.name} fits on the whole of {cluster.name} "
                f"({cluster.gpus:,} GPUs) with a global batch near {global_batch}"
            )
    return Comparison(model.name, tokens, global_batch, plans, scaling)
