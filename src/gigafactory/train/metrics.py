"""Per-step measurements (loss, tokens/s, MFU, memory) and where they are written.

MFU is measured against the catalog's dense peak of the device in use; a device the catalog
does not know (a CPU, an unlisted GPU) gets a warning and no MFU, never a made-up peak.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gigafactory.spec.catalog import load_hardware
from gigafactory.spec.hardware import HardwareSpec

# CUDA device name (torch.cuda.get_device_name) → catalog preset; first match wins.
CUDA_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GB200",), "gb200"),
    (("B200",), "b200"),
    (("H200",), "h200"),
    (("H800",), "h800"),
    (("H100", "HBM3"), "h100-sxm"),
    (("H100", "SXM"), "h100-sxm"),
    (("A100", "80GB"), "a100-80gb"),
)


def catalog_name_for(device_name: str) -> str | None:
    """The catalog preset for a CUDA device name such as 'NVIDIA H100 80GB HBM3', or None."""
    upper = device_name.upper()
    for needles, preset in CUDA_NAMES:
        if all(n in upper for n in needles):
            return preset
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def device_hardware(device: torch.device) -> tuple[HardwareSpec | None, str]:
    """(catalog hardware, '') for a known device, else (None, a warning saying why no MFU)."""
    name = device_name(device)
    preset = catalog_name_for(name) if device.type == "cuda" else None
    if preset is None:
        return None, (
            f"{name} is not in the hardware catalog: no peak FLOP/s, so MFU is not reported "
            "(add a hardware YAML and map the device name in gigafactory.train.metrics)"
        )
    return load_hardware(preset), ""


def catalog_precision(precision: str) -> str:
    """Training precision → the peak that applies: bf16, or TF32 tensor cores for fp32."""
    return "bf16" if precision == "bf16" else "tf32"


def tokens_per_second(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else 0.0


def model_flops_utilization(
    flops_per_token: float, tokens_per_s: float, devices: int, peak_flops: float
) -> float:
    """MFU = tokens/s · model FLOPs per token / (devices · peak FLOP/s per device).

    Chowdhery et al. 2022 (PaLM), App. B: the observed throughput relative to the theoretical
    maximum of the hardware, counting model FLOPs only (no recomputation).
    """
    return tokens_per_s * flops_per_token / (devices * peak_flops)


def memory_gb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024) / 1e9  # bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step, as logged (losses averaged over all data-parallel ranks)."""

    step: int
    loss: float  # next-token cross-entropy
    aux_loss: float  # MoE load-balancing loss (coefficient applied); 0 for dense models
    lr: float
    grad_norm: float
    step_time_s: float
    tokens: int  # tokens of this step, all ranks together
    tokens_per_s: float
    mfu: float | None  # None where the device has no catalog peak
    memory_gb: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class MetricsLog:
    """JSONL (one object per step, flushed) and TensorBoard scalars; used on rank 0 only."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, resume_step: int = 0):
        """A run resumed at ``resume_step`` first drops the steps logged after it (a killed
        run logs steps its last checkpoint does not hold), so no step appears twice."""
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        if self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            tmp.replace(self.path)
        self._jsonl = self.path.open("a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, m: StepMetrics) -> None:
        self._jsonl.write(json.dumps(m.as_dict()) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for key, value in m.as_dict().items():
                if key != "step" and value is not None:
                    self._tb.add_scalar(f"train/{key}", value, m.step)

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every logged step of a run, in the order written; a line cut short by a kill (the last
    one) is left out."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
