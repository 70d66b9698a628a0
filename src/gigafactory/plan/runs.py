"""Published training runs (the schema of data/published_runs.csv) as specs.

Each row carries a model shape, a cluster slice and the layout it ran with, plus what the
source measured. Extra columns beyond the shared schema (``tied_embeddings``, ``position``,
``bias``, ``norm``, MLA ranks, ``sliding_window``, ``attention_sinks``) describe architecture details the
parameter and FLOP counts need; ``grad_reduce`` says in which dtype a run reduced its
gradients where its configuration overrode its framework's default; ``nic_gbps`` the
cluster's scale-out bandwidth per GPU where the source states one other than the data
sheet's.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from gigafactory.errors import SpecError
from gigafactory.plan.compute import Software, software_for
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec

REQUIRED_COLUMNS = (
    "id", "layers", "hidden", "heads", "mlp", "vocab", "seq_len", "gpu", "gpus",
    "precision", "tp", "pp", "dp", "global_batch",
)  # fmt: skip


def default_runs_path() -> Path:
    """The published runs shipped with the package (sources in data/published_runs.README.md)."""
    return Path(str(resources.files("gigafactory") / "data" / "published_runs.csv"))


def default_holdout_path() -> Path:
    """Published runs the calibration never sees (sources in
    data/published_runs_holdout.README.md): the planner's out-of-sample test set."""
    return Path(str(resources.files("gigafactory") / "data" / "published_runs_holdout.csv"))


@dataclass(frozen=True)
class PublishedRun:
    """One row: what ran, on what, how, and what the source measured."""

    row: dict[str, str]

    @property
    def id(self) -> str:
        return self.row["id"]

    def _int(self, key: str, default: int = 0) -> int:
        value = self.row.get(key, "") or ""
        if not value.strip():
            return default
        try:
            return int(float(value))
        except ValueError as exc:
            raise SpecError("run", key, f"row {self.id}: '{value}' is not a number") from exc

    def _float(self, key: str) -> float | None:
        value = (self.row.get(key, "") or "").strip()
        if not value:
            return None
        try:
            return float(value)
        except ValueError as exc:
            raise SpecError("run", key, f"row {self.id}: '{value}' is not a number") from exc

    def _bool(self, key: str, default: bool) -> bool:
        value = (self.row.get(key, "") or "").strip().lower()
        return default if not value else value in ("true", "1", "yes")

    def model(self) -> ModelSpec:
        mla = bool(self._int("kv_lora_rank"))
        return ModelSpec(
            name=self.row.get("model") or self.id,
            layers=self._int("layers"),
            hidden=self._int("hidden"),
            heads=self._int("heads"),
            kv_heads=self._int("kv_heads"),
            head_dim=self._int("head_dim"),
            ffn=self._int("ffn"),
            mlp=self.row["mlp"],
            vocab=self._int("vocab"),
            seq_len=self._int("seq_len"),
            experts=self._int("experts"),
            top_k=self._int("top_k"),
            moe_ffn=self._int("moe_ffn"),
            shared_experts=self._int("shared_experts"),
            dense_layers=self._int("dense_layers"),
            attention="mla" if mla else "gqa",
            q_lora_rank=self._int("q_lora_rank"),
            kv_lora_rank=self._int("kv_lora_rank"),
            qk_nope_head_dim=self._int("qk_nope_head_dim"),
            qk_rope_head_dim=self._int("qk_rope_head_dim"),
            v_head_dim=self._int("v_head_dim"),
            sliding_window=self._int("sliding_window"),
            attention_sinks=self._bool("attention_sinks", False),
            tied_embeddings=self._bool("tied_embeddings", False),
            position=(self.row.get("position") or "rope").strip(),
            bias=self._bool("bias", False),
            norm=(self.row.get("norm") or "rmsnorm").strip(),
        )

    def blank(self, key: str) -> bool:
        """Whether the row leaves ``key`` blank (the source does not say)."""
        return not (self.row.get(key, "") or "").strip()

    def layout(self, **fill: Any) -> LayoutSpec:
        """The row's layout; a blank field takes ``fill[field]`` when given, else its
        framework's documented default (``FRAMEWORK_DEFAULTS``). ``vpp`` may say ``auto``
        (the source ran an interleaved schedule without saying how many chunks): it reads
        as ``fill["vpp"]``, else 1. ``validate.complete_layout`` searches the blanks that
        have no documented default and reports every completion with the result. Sequence
        parallelism is the framework's (``Software.sequence_parallel``: off before 2022)."""
        fsdp = (self.row.get("fsdp") or "").strip()
        if fsdp not in ("fsdp", "zero1", "none"):
            fsdp = fill.get("sharding") or self.software().default_sharding
        mb = self._int("micro_batch", fill.get("micro_batch", 1))
        model_parallel = self._int("tp", 1) * self._int("pp", 1) * self._int("cp", 1)
        dp = self._int("dp", max(1, self.gpus // model_parallel))  # blank: gpus / (tp·pp·cp)
        vpp_text = (self.row.get("vpp") or "").strip().lower()
        vpp = fill.get("vpp", 1) if vpp_text in ("", "auto") else self._int("vpp", 1)
        recompute = (self.row.get("recompute") or "").strip() or fill.get("recompute", "none")
        return LayoutSpec(
            tp=self._int("tp", 1),
            pp=self._int("pp", 1),
            vpp=vpp,
            cp=self._int("cp", 1),
            ep=self._int("ep", 1),
            dp=dp,
            sharding=fsdp,
            micro_batch=mb,
            global_batch=self._int("global_batch", fill.get("global_batch", mb * dp)),
            recompute=recompute,
            precision=self.row["precision"].strip(),
            first_stage_layers=fill.get("first_stage_layers", 0),
            last_stage_layers=fill.get("last_stage_layers", 0),
            sequence_parallel=self.software().sequence_parallel,
        )

    def software(self) -> Software:
        """The row's framework (``compute.software_for``), with the gradient-reduction dtype
        of the ``grad_reduce`` column when it is filled (``fp32``, or ``bf16``/``fp16``)."""
        sw = software_for(self.row.get("framework", "") or "")
        value = (self.row.get("grad_reduce") or "").strip().lower()
        if not value:
            return sw
        if value not in ("fp32", "bf16", "fp16"):
            raise SpecError(
                "run", "grad_reduce", f"row {self.id}: '{value}' is not fp32, bf16 or fp16"
            )
        return dataclasses.replace(sw, grad_reduce_in_fp32=value == "fp32")

    @property
    def gpu(self) -> str:
        return self.row["gpu"].strip()

    @property
    def gpus(self) -> int:
        return self._int("gpus")

    @property
    def nic_gbps(self) -> float:
        """Scale-out bandwidth per GPU of the cluster the source ran on, in Gb/s, where the
        source states it (``nic_gbps`` column); 0 = the accelerator's data-sheet NIC."""
        value = self._float("nic_gbps")
        if value is None:
            return 0.0
        if not value > 0:  # also NaN
            raise SpecError("run", "nic_gbps", f"row {self.id}: '{value}' is not a positive Gb/s")
        return value

    @property
    def params_b(self) -> float | None:
        return self._float("params_b")

    def published(self, key: str) -> float | None:
        """A measured figure: tflops_per_gpu, util_pct or tokens_per_s_per_gpu."""
        return self._float(key)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.row)


def read_runs(path: str | Path | None = None) -> list[PublishedRun]:
    """Rows of a published-runs CSV; a missing column or file is a clear error."""
    source = Path(path) if path is not None else default_runs_path()
    if not source.is_file():
        raise SpecError("runs", "file", f"{source} does not exist; pass a CSV of published runs")
    with source.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise SpecError(
                "runs",
                "columns",
                f"{source} lacks column(s) {', '.join(missing)}; "
                "use the schema of data/published_runs.csv",
            )
        rows = [PublishedRun(dict(r)) for r in reader if (r.get("id") or "").strip()]
    if not rows:
        raise SpecError("runs", "file", f"{source} has no rows")
    return rows
