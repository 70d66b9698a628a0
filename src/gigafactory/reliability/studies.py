"""Failure-rate presets from published large-cluster reliability studies.

- ``llama3``: Llama 3 405B pre-training, 16,384 H100, 54 days (Meta 2024, Table 5); rates
  per root cause, linear in job size.
- ``rsc1`` / ``rsc2``: Meta's research clusters (Kokolis et al. 2024, arXiv 2410.21680):
  infrastructure failures at r_f per node-day, linear in job size (the paper's own
  projection MTTF = (N_nodes · r_f)^-1). No planned stops, no manual share published.
- ``rsc-jobs``: the same paper's *measured* job MTTF by job size (47.7 days at 8 GPUs, 7.9 h
  at 1,024 GPUs), which grows faster than linearly; fitted as a power law λ ∝ N^α through
  the two measurements (α ≈ 1.026).

The published figures themselves are in ``data/kokolis2024_rsc.csv`` (with its README).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources

from gigafactory.errors import SpecError
from gigafactory.reliability.failures import HOURS_PER_DAY, Cause, FailureModel
from gigafactory.reliability.failures import llama3_failure_model as _llama3

GPUS_PER_NODE = 8  # A100 nodes of RSC-1 and RSC-2
RSC_SOURCE = (
    "Kokolis et al., Revisiting Reliability in Large-Scale ML Research Clusters "
    "(HPCA 2025, arXiv 2410.21680)"
)


@dataclass(frozen=True)
class PublishedFigure:
    """One row of ``kokolis2024_rsc.csv``: a figure the study publishes, with its inputs."""

    figure: str
    cluster: str
    gpus: int
    value: float
    unit: str
    checkpoint_interval_min: float
    restart_min: float
    checkpoint_write_min: float
    where: str

    @property
    def hours(self) -> float:
        """An MTTF row's value in hours."""
        return self.value * (HOURS_PER_DAY if self.unit == "days" else 1.0)


def published_figures() -> list[PublishedFigure]:
    """Every row of the packaged Kokolis et al. figures."""
    path = resources.files("gigafactory") / "data" / "kokolis2024_rsc.csv"
    with path.open(newline="") as f:
        return [
            PublishedFigure(
                figure=r["figure"],
                cluster=r["cluster"],
                gpus=int(r["gpus"] or 0),
                value=float(r["value"]),
                unit=r["unit"],
                checkpoint_interval_min=float(r["checkpoint_interval_min"] or 0),
                restart_min=float(r["restart_min"] or 0),
                checkpoint_write_min=float(r["checkpoint_write_min"] or 0),
                where=r["where"],
            )
            for r in csv.DictReader(f)
        ]


def _figures(kind: str) -> list[PublishedFigure]:
    return [f for f in published_figures() if f.figure == kind]


def rsc_failure_model(cluster: str = "RSC-1") -> FailureModel:
    """Linear model from the cluster's r_f: λ_GPU = r_f / (8 GPUs · 24 h)."""
    rate = next(f for f in _figures("failure_rate") if f.cluster == cluster)
    per_node_day = rate.value / 1000
    cause = Cause(
        "infrastructure failure (NODE_FAIL or critical health check)",
        per_node_day / (GPUS_PER_NODE * HOURS_PER_DAY),
        "infrastructure",
    )
    return FailureModel(
        causes=(cause,),
        planned_per_day=0.0,
        manual_fraction=0.0,
        source=f"{RSC_SOURCE}: {cluster}, r_f = {rate.value} per 1000 node-days",
    )


def rsc_job_failure_model() -> FailureModel:
    """Power law through the two measured job MTTFs: λ(N) = λ(N₀)·(N/N₀)^α.

    α = ln(M(N₀)/M(N₁)) / ln(N₁/N₀) with N₀ = 8, N₁ = 1,024 GPUs.
    """
    small, large = sorted(_figures("job_mttf_measured"), key=lambda f: f.gpus)
    alpha = math.log(small.hours / large.hours) / math.log(large.gpus / small.gpus)
    cause = Cause("job failure, all causes (measured)", 1 / (small.hours * small.gpus), "all")
    return FailureModel(
        causes=(cause,),
        planned_per_day=0.0,
        manual_fraction=0.0,
        source=f"{RSC_SOURCE}: measured job MTTF by job size, λ ∝ N^{alpha:.3f}",
        reference_gpus=small.gpus,
        size_exponent=alpha,
    )


STUDIES = {
    "llama3": _llama3,
    "rsc1": lambda: rsc_failure_model("RSC-1"),
    "rsc2": lambda: rsc_failure_model("RSC-2"),
    "rsc-jobs": rsc_job_failure_model,
}


def load_study(name: str) -> FailureModel:
    """The failure model of a study preset by name (see ``STUDIES``)."""
    if name not in STUDIES:
        known = ", ".join(sorted(STUDIES))
        raise SpecError("reliability", "study", f"unknown study {name!r}; known: {known}")
    return STUDIES[name]()
