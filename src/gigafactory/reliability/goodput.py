"""Checkpoint cadence and goodput under failures, in closed form.

Symbols: M = mean time between interruptions of the job, δ = time a checkpoint stalls
training, R = time to restart after an interruption (detect, reschedule onto spares, reload
the checkpoint), τ = useful work between checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gigafactory.errors import SpecError
from gigafactory.reliability.failures import FailureModel, llama3_failure_model
from gigafactory.spec._fields import positive_float, positive_int

SECONDS_PER_HOUR = 3600.0
# Mixed-precision Adam state saved per parameter: bf16 weights (2) + fp32 master (4)
# + two fp32 moments (8) = 14 bytes (Rajbhandari et al. 2020, ZeRO, Sec. 3.1, less fp32 grads).
CHECKPOINT_BYTES_PER_PARAM = 14


def expected_goodput(
    interval_s: float, checkpoint_s: float, mtbf_s: float, restart_s: float
) -> float:
    """Fraction of wall time that becomes kept progress, for Poisson interruptions.

    Daly 2006 (A higher order estimate of the optimum checkpoint interval, Eq. 13): the
    expected wall time to complete one segment of τ work plus a δ checkpoint, when failures
    with mean M may strike at any time, restarts included, is
    E[T] = M · e^{R/M} · (e^{(τ+δ)/M} − 1), so goodput = τ / E[T]. Exact for exponential
    failures; it reduces to the first-order τ/(τ+δ) · (1 − ((τ+δ)/2 + R)/M) when M is large.
    """
    if not interval_s > 0 or not checkpoint_s >= 0 or not mtbf_s > 0 or not restart_s >= 0:
        raise SpecError("reliability", "interval_s", "times must be positive")
    exponent = (interval_s + checkpoint_s) / mtbf_s + restart_s / mtbf_s
    if exponent > 700:  # e^700 overflows: no useful work gets through
        return 0.0
    expected = (
        mtbf_s * math.exp(restart_s / mtbf_s) * math.expm1((interval_s + checkpoint_s) / mtbf_s)
    )
    return interval_s / expected


def daly_optimal_interval_s(checkpoint_s: float, mtbf_s: float, restart_s: float = 0.0) -> float:
    """Work between checkpoints that maximises ``expected_goodput``.

    Starts from Young's (1974) τ = √(2δM) and refines by golden-section search on the exact
    expression, so it stays right when M is only minutes (100k GPUs), where the first-order
    formulas break down.
    """
    if checkpoint_s <= 0 or mtbf_s <= 0:
        raise SpecError("reliability", "checkpoint_s", "checkpoint time and MTBF must be > 0")
    young = math.sqrt(2 * checkpoint_s * mtbf_s)
    lo, hi = young / 20, young * 20
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if expected_goodput(a, checkpoint_s, mtbf_s, restart_s) >= expected_goodput(
            b, checkpoint_s, mtbf_s, restart_s
        ):
            hi = b
        else:
            lo = a
    return (lo + hi) / 2


def checkpoint_stall_s(
    params: float, gpus: int, storage_gbs: float, asynchronous: bool, host_copy_gbs: float
) -> float:
    """Seconds a checkpoint stalls training.

    Synchronous: the whole state (14 B/param) through the storage system's aggregate write
    bandwidth. Asynchronous (torch.distributed.checkpoint ``async_save``): only the copy of each
    GPU's shard to host memory over PCIe blocks; the file system write overlaps training.
    """
    state_bytes = params * CHECKPOINT_BYTES_PER_PARAM
    if asynchronous:
        return state_bytes / gpus / (host_copy_gbs * 1e9)
    return state_bytes / (storage_gbs * 1e9)


@dataclass(frozen=True)
class ReliabilityScenario:
    """A run of ``work_days`` of failure-free training on ``gpus`` GPUs."""

    gpus: int = 100_000
    work_days: float = 54.0
    checkpoint_s: float = 10.0  # stall per checkpoint (async save: host copy + barrier); 0 = none
    restart_s: float = 300.0  # detect (NCCL watchdog), swap in spares, reload the checkpoint
    manual_repair_s: float = 4 * 3600.0
    interval_s: float = 0.0  # 0 = Daly's optimum
    failure_scale: float = 1.0
    failures: FailureModel = field(default_factory=llama3_failure_model)

    def __post_init__(self) -> None:
        positive_int("reliability", "gpus", self.gpus)
        positive_float("reliability", "work_days", self.work_days)
        for name in ("checkpoint_s", "restart_s", "manual_repair_s", "interval_s"):
            positive_float("reliability", name, getattr(self, name), allow_zero=True)
        if self.checkpoint_s == 0 and self.interval_s == 0:
            raise SpecError(
                "reliability",
                "checkpoint_s",
                "a checkpoint that costs nothing has no optimal interval; give checkpoint_s > 0 "
                "or an explicit interval_s",
            )
        positive_float("reliability", "failure_scale", self.failure_scale)

    @property
    def model(self) -> FailureModel:
        return (
            self.failures if self.failure_scale == 1 else self.failures.scaled(self.failure_scale)
        )

    @property
    def mtbf_s(self) -> float:
        return self.model.job_mtbf_hours(self.gpus) * SECONDS_PER_HOUR

    @property
    def manual_share(self) -> float:
        """Share of unexpected interruptions that need a person before the job restarts."""
        return self.model.manual_fraction

    @property
    def mean_restart_s(self) -> float:
        """R averaged over causes: automated restarts plus the manual share's repair time."""
        return self.restart_s + self.manual_share * self.manual_repair_s

    @property
    def interval(self) -> float:
        return self.interval_s or daly_optimal_interval_s(
            self.checkpoint_s, self.mtbf_s, self.restart_s
        )


@dataclass(frozen=True)
class ReliabilityResult:
    gpus: int
    mtbf_hours: float
    interruptions_per_day: float
    planned_per_day: float
    checkpoint_interval_s: float
    checkpoint_s: float
    restart_s: float
    goodput: float
    wall_days: float
    work_days: float
    causes: list[dict[str, float | str]]


def analyze(s: ReliabilityScenario) -> ReliabilityResult:
    """Closed-form view of a scenario; planned stops cost a restart each, lose no work."""
    mtbf = s.mtbf_s
    tau = s.interval
    # Automated restarts are exposed to further failures (Daly's E[T]); a manual repair adds
    # its time once per failure that needs it: wall time scales by (1 + m·R_m/M).
    goodput = expected_goodput(tau, s.checkpoint_s, mtbf, s.restart_s) / (
        1 + s.manual_share * s.manual_repair_s / mtbf
    )
    planned_loss = s.model.planned_per_day * s.restart_s / 86_400
    goodput = max(0.0, goodput * (1 - planned_loss))
    wall_days = s.work_days / goodput if goodput > 0 else math.inf
    per_day = 86_400 / mtbf
    causes = [
        {"cause": c.name, "category": c.category, "share": share, "per_day": per_day * share}
        for c, share in s.model.cause_shares()
    ]
    return ReliabilityResult(
        gpus=s.gpus,
        mtbf_hours=mtbf / SECONDS_PER_HOUR,
        interruptions_per_day=per_day,
        planned_per_day=s.model.planned_per_day,
        checkpoint_interval_s=tau,
        checkpoint_s=s.checkpoint_s,
        restart_s=s.mean_restart_s,
        goodput=goodput,
        wall_days=wall_days,
        work_days=s.work_days,
        causes=causes,
    )
