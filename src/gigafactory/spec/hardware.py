"""HardwareSpec (one accelerator) and ClusterSpec (many of them, wired together)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gigafactory.errors import SpecError
from gigafactory.spec._fields import from_dict, one_of, positive_float, positive_int

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8", "fp4")
FABRICS = ("infiniband", "spectrum-x", "roce", "ethernet")


@dataclass(frozen=True)
class HardwareSpec:
    """One accelerator as its data sheet states it, plus measured kernel efficiencies.

    ``peak_tflops`` holds dense (not sparse) matmul peaks per precision. Bandwidths are per
    GPU: ``nvlink_gbs`` is the scale-up bandwidth in GB/s per direction, ``nic_gbps`` the
    scale-out NIC in Gb/s. ``efficiency`` maps a kernel kind (e.g. ``matmul``, ``attention``,
    ``memory``) to the fraction of peak that kernel reaches on this device; the planner
    calibrates these per accelerator, never per run.
    """

    name: str
    peak_tflops: dict[str, float]
    memory_gb: float
    memory_bw_tbs: float
    nvlink_gbs: float
    nvlink_domain: int
    nic_gbps: float
    tdp_w: float
    efficiency: dict[str, float] = field(default_factory=dict)
    vendor: str = "nvidia"
    source: str = ""

    def __post_init__(self) -> None:
        s = "hardware"
        if not self.name:
            raise SpecError(s, "name", "must not be empty")
        if not self.peak_tflops:
            raise SpecError(s, "peak_tflops", "give at least one precision, e.g. {bf16: 989}")
        for precision, value in self.peak_tflops.items():
            one_of(s, "peak_tflops", precision, PRECISIONS)
            positive_float(s, f"peak_tflops.{precision}", value)
        for f in ("memory_gb", "memory_bw_tbs", "nvlink_gbs", "nic_gbps", "tdp_w"):
            positive_float(s, f, getattr(self, f))
        positive_int(s, "nvlink_domain", self.nvlink_domain)
        for kind, value in self.efficiency.items():
            positive_float(s, f"efficiency.{kind}", value)
            if value > 1:
                raise SpecError(s, f"efficiency.{kind}", f"is a fraction of peak, got {value}")

    def peak(self, precision: str) -> float:
        """Dense peak in TFLOP/s for ``precision``; a clear error if the device lacks it."""
        if precision not in self.peak_tflops:
            have = ", ".join(sorted(self.peak_tflops))
            raise SpecError(
                "hardware",
                "peak_tflops",
                f"{self.name} has no {precision} peak (it has {have}); choose one of those",
            )
        return self.peak_tflops[precision]

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HardwareSpec:
        return from_dict(cls, data, "hardware")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ClusterSpec:
    """A training cluster: how many accelerators, how they are wired, powered and paid for.

    ``fabric_efficiency`` is the share of NIC line rate that collectives reach at scale (NVIDIA
    reports 95% for Spectrum-X against about 60% for standard Ethernet). ``node_power_w`` is
    the whole server at load (GPUs included); ``pue`` the facility overhead on top.
    ``power_budget_mw`` is the facility's grid supply (0 = not known, not checked).
    """

    name: str
    gpu: str  # a HardwareSpec preset name
    gpus: int
    gpus_per_node: int = 8
    nvlink_domain: int = 0  # 0 = the accelerator's own domain size
    nic_gbps: float = 0.0  # 0 = the accelerator's own NIC
    fabric: str = "infiniband"
    fabric_efficiency: float = 0.9
    topology: str = "rail-optimized fat-tree"
    node_power_w: float = 0.0  # 0 = derive from GPU TDP plus host share
    pue: float = 1.3
    usd_per_gpu_hour: float = 2.0
    usd_per_kwh: float = 0.08
    power_budget_mw: float = 0.0  # facility supply; 0 = unknown
    source: str = ""

    def __post_init__(self) -> None:
        s = "cluster"
        if not self.name:
            raise SpecError(s, "name", "must not be empty")
        if not self.gpu:
            raise SpecError(s, "gpu", "name the accelerator preset, e.g. h100-sxm")
        positive_int(s, "gpus", self.gpus)
        positive_int(s, "gpus_per_node", self.gpus_per_node)
        positive_int(s, "nvlink_domain", self.nvlink_domain, minimum=0)
        positive_float(s, "nic_gbps", self.nic_gbps, allow_zero=True)
        one_of(s, "fabric", self.fabric, FABRICS)
        positive_float(s, "fabric_efficiency", self.fabric_efficiency)
        if self.fabric_efficiency > 1:
            raise SpecError(s, "fabric_efficiency", "is a fraction of line rate (0..1]")
        positive_float(s, "node_power_w", self.node_power_w, allow_zero=True)
        positive_float(s, "pue", self.pue)
        if self.pue < 1:
            raise SpecError(s, "pue", f"power usage effectiveness is >= 1, got {self.pue}")
        positive_float(s, "usd_per_gpu_hour", self.usd_per_gpu_hour, allow_zero=True)
        positive_float(s, "usd_per_kwh", self.usd_per_kwh, allow_zero=True)
        positive_float(s, "power_budget_mw", self.power_budget_mw, allow_zero=True)
        if self.gpus % self.gpus_per_node and self.gpus > self.gpus_per_node:
            raise SpecError(
                s, "gpus", f"{self.gpus} is not a whole number of {self.gpus_per_node}-GPU nodes"
            )

    @property
    def nodes(self) -> int:
        return max(1, self.gpus // self.gpus_per_node)

    def with_gpus(self, gpus: int) -> ClusterSpec:
        """The same cluster design at another size (e.g. the part a run uses)."""
        return dataclasses.replace(self, gpus=gpus)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterSpec:
        return from_dict(cls, data, "cluster")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
