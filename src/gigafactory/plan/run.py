"""A whole training run: days, GPU-hours, power, energy and cost for a token budget.

power = nodes · node power · PUE (the facility's overhead on the IT load);
energy = power · wall-clock hours; cost = GPU-hours · $/GPU-hour (capital and non-energy
operations) + energy · $/kWh.
"""

from __future__ import annotations

from dataclasses import dataclass

from gigafactory.plan.step import StepEstimate
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


@dataclass(frozen=True)
class RunEstimate:
    """Totals of a training run of ``tokens`` at the step's throughput."""

    tokens: float
    steps: float
    days: float
    gpu_hours: float
    power_mw: float
    energy_mwh: float
    compute_cost_usd: float
    energy_cost_usd: float

    @property
    def cost_usd(self) -> float:
        return self.compute_cost_usd + self.energy_cost_usd


def estimate_run(
    step: StepEstimate,
    cluster: ClusterSpec,
    hardware: HardwareSpec,
    tokens: float = DEFAULT_TOKENS,
) -> RunEstimate:
    """Whole-run totals at ``step``'s throughput (no failures; see ``reliability`` for those)."""
    seconds = tokens / step.tokens_per_s
    hours = seconds / 3600
    power = facility_power_mw(step.gpus, cluster, hardware)
    energy = power * hours
    gpu_hours = step.gpus * hours
    return RunEstimate(
        tokens=tokens,
        steps=tokens / step.tokens_per_step,
        days=seconds / 86400,
        gpu_hours=gpu_hours,
        power_mw=power,
        energy_mwh=energy,
        compute_cost_usd=gpu_hours * cluster.usd_per_gpu_hour,
        energy_cost_usd=energy * 1000 * cluster.usd_per_kwh,
    )
