"""Interruption rates per root cause, scaled from a measured run to any cluster size.

The default measured run is Llama 3 405B pre-training (Meta 2024, Table 5): 419 unexpected
interruptions in 54 days on 16,384 H100 GPUs, plus 47 planned ones. Unexpected failures
scale with the number of components, i.e. linearly with GPUs (a job stops when any of its
GPUs, hosts, NICs or links fails); planned interruptions are scheduled per job, not per GPU.
Other studies (``gigafactory.reliability.studies``) may measure a job failure rate that grows
faster than linearly with job size: ``size_exponent`` > 1 models it as a power law around
the study's ``reference_gpus``.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gigafactory.errors import SpecError

HOURS_PER_DAY = 24.0


@dataclass(frozen=True)
class Cause:
    name: str
    rate_per_gpu_hour: float  # at the study's reference job size
    category: str  # hardware | software | network | infrastructure


@dataclass(frozen=True)
class FailureModel:
    """Interruption causes with per-GPU-hour rates, and planned stops per job-day."""

    causes: tuple[Cause, ...]
    planned_per_day: float
    manual_fraction: float  # share of interruptions that need a person before a restart
    source: str
    reference_gpus: int = 1  # job size at which the per-GPU rates were measured
    size_exponent: float = 1.0  # 1 = failures linear in job size; > 1 = faster than linear

    @property
    def rate_per_gpu_hour(self) -> float:
        return sum(c.rate_per_gpu_hour for c in self.causes)

    def job_rate_per_hour(self, gpus: int) -> float:
        """Unexpected interruptions per hour of a job spanning ``gpus`` GPUs.

        λ(N) = N₀·Σλ_i · (N/N₀)^α with N₀ = ``reference_gpus`` and α = ``size_exponent``;
        α = 1 is the series-system law λ = N·Σλ_i (every component a single point of failure).
        """
        n0 = self.reference_gpus
        return n0 * self.rate_per_gpu_hour * (gpus / n0) ** self.size_exponent

    def job_mtbf_hours(self, gpus: int) -> float:
        """Mean time between unexpected interruptions of the whole job: M = 1 / (N·Σλ_i)."""
        if gpus <= 0:
            raise SpecError("reliability", "gpus", f"must be positive, got {gpus}")
        return 1.0 / self.job_rate_per_hour(gpus)

    def cause_shares(self) -> list[tuple[Cause, float]]:
        total = self.rate_per_gpu_hour
        return [(c, c.rate_per_gpu_hour / total) for c in self.causes]

    def scaled(self, factor: float) -> FailureModel:
        """Every unexpected rate times ``factor`` (e.g. 0.5 for twice-as-reliable parts)."""
        if factor <= 0:
            raise SpecError("reliability", "failure_scale", f"must be > 0, got {factor}")
        causes = tuple(
            dataclasses.replace(c, rate_per_gpu_hour=c.rate_per_gpu_hour * factor)
            for c in self.causes
        )
        return dataclasses.replace(self, causes=causes)


def llama3_failure_model(
    path: str | Path | None = None,
    gpus: int = 16_384,
    days: float = 54.0,
    planned: int = 47,
    manual: int = 3,
) -> FailureModel:
    """Per-GPU-hour rates from the Llama 3 interruption table: λ_i = count_i / (N · T)."""
    source = Path(
        path
        if path is not None
        else str(resources.files("gigafactory") / "data" / "llama3_interruptions.csv")
    )
    gpu_hours = gpus * days * HOURS_PER_DAY
    with source.open(newline="") as f:
        causes = tuple(
            Cause(
                name=row["cause"],
                rate_per_gpu_hour=int(row["count"]) / gpu_hours,
                category=row["category"],
            )
            for row in csv.DictReader(f)
        )
    unexpected = sum(c.rate_per_gpu_hour for c in causes) * gpu_hours
    return FailureModel(
        causes=causes,
        planned_per_day=planned / days,
        manual_fraction=manual / unexpected,
        source="The Llama 3 Herd of Models (2024), Table 5: 16,384 H100, 54 days",
    )
