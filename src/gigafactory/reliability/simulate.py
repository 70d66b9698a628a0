"""Monte Carlo simulation of a training run under interruptions.

Each trial replays the run: work proceeds in cycles of τ work + δ checkpoint; unexpected
interruptions arrive as a Poisson process with the job's rate N·Σλ_i (automated restarts are
not immune: a failure during one starts it over; a manual repair runs to its end) and throw away the work since the last
checkpoint, then cost a restart R (plus a manual repair for the causes that need a person);
planned stops arrive per job-day, save a checkpoint first and cost a restart.
Trials run side by side as numpy arrays; the loop runs once per interruption.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gigafactory.reliability.goodput import ReliabilityScenario
from gigafactory.spec._fields import positive_int

DAY_S = 86_400.0


@dataclass(frozen=True)
class SimulationResult:
    trials: int
    goodput_mean: float
    goodput_p5: float
    goodput_p95: float
    wall_days_mean: float
    wall_days_p95: float
    interruptions_mean: float
    planned_mean: float
    # mean days spent per activity: useful, checkpoint, rework, restart, manual, planned
    days: dict[str, float]


def simulate(
    scenario: ReliabilityScenario,
    trials: int = 200,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> SimulationResult:
    """Replay ``trials`` runs of ``scenario``; ``progress`` gets the done fraction (0..1)."""
    positive_int("reliability", "trials", trials)
    positive_int("reliability", "seed", seed, minimum=0)
    rng = np.random.default_rng(seed)
    model = scenario.model
    tau, delta = scenario.interval, scenario.checkpoint_s
    cycle = tau + delta
    unexpected_rate = 1.0 / scenario.mtbf_s
    planned_rate = model.planned_per_day / DAY_S
    total_rate = unexpected_rate + planned_rate
    manual_share = model.manual_fraction
    work = scenario.work_days * DAY_S

    remaining = np.full(trials, work)
    acc = {k: np.zeros(trials) for k in ("checkpoint", "rework", "restart", "manual", "planned")}
    useful = np.zeros(trials)
    pending = np.zeros(trials)  # restart time still owed before work resumes
    pending_kind = np.zeros(trials, dtype=int)  # 0 restart, 1 manual repair, 2 planned
    n_unexpected = np.zeros(trials)
    n_planned = np.zeros(trials)
    active = np.ones(trials, dtype=bool)
    kinds = ("restart", "manual", "planned")
    while active.any():
        idx = np.flatnonzero(active)
        gap = rng.exponential(1.0 / total_rate, idx.size)  # wall time to the next stop
        # The gap first pays any restart still owed; a stop during a restart wastes it.
        paid = np.minimum(gap, pending[idx])
        for k, name in enumerate(kinds):
            acc[name][idx] += paid * (pending_kind[idx] == k)
        pending[idx] -= paid
        avail = gap - paid
        cycles = np.floor(avail / cycle)
        done = cycles * tau
        need = remaining[idx]
        finishes = done >= need
        # Runs that finish before the next stop: whole cycles, then the last partial one.
        f = idx[finishes]
        useful[f] += need[finishes]
        acc["checkpoint"][f] += np.floor(need[finishes] / tau) * delta
        remaining[f] = 0.0
        active[f] = False
        # Runs interrupted: keep the checkpointed cycles, then handle the stop.
        i = idx[~finishes]
        kept = done[~finishes]
        partial = avail[~finishes] - cycles[~finishes] * cycle
        useful[i] += kept
        acc["checkpoint"][i] += cycles[~finishes] * delta
        remaining[i] -= kept
        planned = rng.random(i.size) < planned_rate / total_rate
        manual = ~planned & (rng.random(i.size) < manual_share)
        # Planned stop: checkpoint the partial work first (never more than is left).
        saved = np.minimum(np.minimum(partial, tau), remaining[i]) * planned
        useful[i] += saved
        remaining[i] -= saved
        acc["planned"][i] += planned * delta
        acc["rework"][i] += ~planned * partial
        # A stop during a manual repair does not cut the repair short.
        owed = scenario.restart_s + manual * scenario.manual_repair_s
        keep = pending[i] > owed
        pending[i] = np.maximum(pending[i], owed)
        pending_kind[i] = np.where(
            keep, pending_kind[i], np.where(planned, 2, np.where(manual, 1, 0))
        )
        n_planned[i] += planned
        n_unexpected[i] += ~planned
        active[i[remaining[i] <= 0]] = False
        if progress is not None:
            progress(1.0 - float(np.mean(remaining)) / work)
    wall = useful + sum(acc.values())
    goodput = useful / wall
    return SimulationResult(
        trials=trials,
        goodput_mean=float(goodput.mean()),
        goodput_p5=float(np.percentile(goodput, 5)),
        goodput_p95=float(np.percentile(goodput, 95)),
        wall_days_mean=float(wall.mean() / DAY_S),
        wall_days_p95=float(np.percentile(wall, 95) / DAY_S),
        interruptions_mean=float(n_unexpected.mean()),
        planned_mean=float(n_planned.mean()),
        days={"useful": float(useful.mean() / DAY_S)}
        | {k: float(v.mean() / DAY_S) for k, v in acc.items()},
    )
