"""A whole training run: days, GPU-hours, power, energy and cost for a token budget.

power = nodes · node power · PUE (the facility's overhead on the IT load);
energy = power · wall-clock hours; the power is checked against the cluster's supply
(``ClusterSpec.power_budget_mw``) and the largest GPU count that supply feeds is reported; cost = GPU-hours · $/GPU-hour (capital and non-energy
operations) + energy · $/kWh. Wall-clock time includes the goodput lost to interruptions
(``gigafactory.reliability``): the GPUs are held, powered and paid for through checkpoints,
rework and restarts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gigafactory.plan.step import StepEstimate
from gigafactory.reliability import ReliabilityScenario, analyze
from gigafactory.spec.hardware import ClusterSpec, HardwareSpec

#: Default token budget for the default scenario (Grok-1 on Colossus). xAI has not published
#: Grok-1's training tokens; 6T is an assumption between Llama 2 (2T) and Llama 3 (15T),
#: about 70 tokens per active parameter.
DEFAULT_TOKENS = 6e12
#: Host share on top of GPU TDP when a cluster gives no node power (CPUs, NICs, fans,
#: memory: a DGX H100 draws 10.2 kW for 8 × 700 W of GPUs, ≈ 1.8×).
HOST_POWER_FACTOR = 1.8


def node_power_w(cluster: ClusterSpec, hardware: HardwareSpec) -> float:
    """The cluster's node power at load, or GPU TDP × GPUs per node × ``HOST_POWER_FACTOR``."""
    if cluster.node_power_w:
        return cluster.node_power_w
    return hardware.tdp_w * cluster.gpus_per_node * HOST_POWER_FACTOR


def facility_power_mw(gpus: int, cluster: ClusterSpec, hardware: HardwareSpec) -> float:
    """Facility power of ``gpus`` GPUs: nodes · node power · PUE, in MW."""
    nodes = gpus / cluster.gpus_per_node
    return nodes * node_power_w(cluster, hardware) * cluster.pue / 1e6


def gpus_within_budget(cluster: ClusterSpec, hardware: HardwareSpec) -> int:
    """The most GPUs (whole nodes) whose facility power fits the cluster's supply; 0 when the
    cluster states no supply: ⌊budget / (node power · PUE)⌋ · GPUs per node."""
    if not cluster.power_budget_mw:
        return 0
    node_mw = facility_power_mw(cluster.gpus_per_node, cluster, hardware)
    return math.floor(cluster.power_budget_mw / node_mw + 1e-9) * cluster.gpus_per_node


@dataclass(frozen=True)
class RunEstimate:
    """Totals of a training run of ``tokens`` at the step's throughput."""

    tokens: float
    steps: float
    days: float  # failure-free: tokens / throughput
    goodput: float  # share of wall-clock time that becomes kept progress
    wall_days: float  # days / goodput
    interruptions: float  # expected unexpected interruptions over the run
    checkpoint_interval_s: float
    gpu_hours: float
    power_mw: float
    energy_mwh: float
    compute_cost_usd: float
    energy_cost_usd: float
    power_budget_mw: float = 0.0  # the cluster's supply; 0 = not stated
    power_exceeds_budget: bool = False
    gpus_within_budget: int = 0  # most GPUs the supply feeds; 0 = no budget stated

    @property
    def cost_usd(self) -> float:
        return self.compute_cost_usd + self.energy_cost_usd

    def power_note(self) -> str:
        """One sentence on power against supply ('' when the cluster states no supply)."""
        if not self.power_budget_mw:
            return ""
        if self.power_exceeds_budget:
            return (
                f"facility power {self.power_mw:,.1f} MW exceeds the {self.power_budget_mw:,.0f} MW "
                f"supply by {self.power_mw - self.power_budget_mw:,.1f} MW: the supply feeds at "
                f"most {self.gpus_within_budget:,} GPUs"
            )
        return f"facility power {self.power_mw:,.1f} MW within the {self.power_budget_mw:,.0f} MW supply"


def estimate_run(
    step: StepEstimate,
    cluster: ClusterSpec,
    hardware: HardwareSpec,
    tokens: float = DEFAULT_TOKENS,
    reliability: ReliabilityScenario | None = None,
) -> RunEstimate:
    """Whole-run totals at ``step``'s throughput, with the goodput left after failures.

    ``reliability`` sets checkpoint stall, restart time and failure rates (defaults: Llama 3's
    per-GPU interruption rates, 10 s checkpoint stalls, 5-minute restarts); its ``gpus`` and
    ``work_days`` are taken from the step and the token budget.
    """
    seconds = tokens / step.tokens_per_s
    days = seconds / 86400
    scenario = dataclasses.replace(
        reliability or ReliabilityScenario(), gpus=step.gpus, work_days=days
    )
    failures = analyze(scenario)
    wall_hours = seconds / failures.goodput / 3600 if failures.goodput > 0 else math.inf
    power = facility_power_mw(step.gpus, cluster, hardware)
    energy = power * wall_hours
    gpu_hours = step.gpus * wall_hours
    return RunEstimate(
        tokens=tokens,
        steps=tokens / step.tokens_per_step,
        days=days,
        goodput=failures.goodput,
        wall_days=wall_hours / 24,
        interruptions=failures.interruptions_per_day * wall_hours / 24,
        checkpoint_interval_s=failures.checkpoint_interval_s,
        gpu_hours=gpu_hours,
        power_mw=power,
        energy_mwh=energy,
        compute_cost_usd=gpu_hours * cluster.usd_per_gpu_hour,
        energy_cost_usd=energy * 1000 * cluster.usd_per_kwh,
        power_budget_mw=cluster.power_budget_mw,
        power_exceeds_budget=bool(cluster.power_budget_mw) and power > cluster.power_budget_mw,
        gpus_within_budget=gpus_within_budget(cluster, hardware),
    )
