"""LayoutSpec: how a training run is split over GPUs. One object owns the layout (as
torchtitan's ParallelDims does), and ``check`` validates every degree in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from gigafactory.errors import LayoutError, SpecError
from gigafactory.spec._fields import from_dict, one_of, positive_int
from gigafactory.spec.model import ModelSpec
from gigafactory.vec import vmax, where

SHARDING = ("none", "zero1", "fsdp")
RECOMPUTE = ("none", "selective", "full")
TRAIN_PRECISIONS = ("bf16", "fp16", "fp8", "fp32")
GRAD_REDUCE = ("", "fp32", "bf16")


@dataclass(frozen=True)
class LayoutSpec:
    """Parallel degrees and batch of one run.

    tp·pp·cp·dp = GPUs. Experts are split ``ep`` ways inside the dp·cp group (Megatron-Core's
    convention), so ``ep`` must divide dp·cp. ``vpp`` is the number of interleaved model chunks
    per pipeline stage. ``global_batch`` and ``micro_batch`` count sequences.

    ``first_stage_layers``/``last_stage_layers``: uneven pipeline stages, Megatron-Core's
    ``num_layers_in_first_pipeline_stage``/``num_layers_in_last_pipeline_stage``
    (``--decoder-first/last-pipeline-num-layers``); 0 means an even split. The other
    stages share the remaining layers evenly (NVIDIA/Megatron-LM d98e8a6,
    ``megatron/core/transformer/transformer_block.py`` lines 103–146,
    ``get_num_layers_to_build``; every stage a multiple of vpp, ``transformer_config.py``
    lines 2296–2330).

    ``grad_reduce``: the dtype gradients are accumulated and reduced in (Megatron's
    ``--grad-reduce-in-bf16``/``grad_reduce_in_fp32``); "" keeps the framework's default.
    """

    tp: int = 1
    pp: int = 1
    dp: int = 1
    vpp: int = 1
    cp: int = 1
    ep: int = 1
    sharding: str = "zero1"
    micro_batch: int = 1
    global_batch: int = 1
    recompute: str = "none"
    precision: str = "bf16"
    sequence_parallel: bool = True  # Megatron SP alongside TP (Korthikanti et al. 2022)
    first_stage_layers: int = 0
    last_stage_layers: int = 0
    grad_reduce: str = ""

    def __post_init__(self) -> None:
        s = "layout"
        for f in ("tp", "pp", "dp", "vpp", "cp", "ep", "micro_batch", "global_batch"):
            positive_int(s, f, getattr(self, f))
        for f in ("first_stage_layers", "last_stage_layers"):
            positive_int(s, f, getattr(self, f), minimum=0)
        one_of(s, "sharding", self.sharding, SHARDING)
        one_of(s, "recompute", self.recompute, RECOMPUTE)
        one_of(s, "precision", self.precision, TRAIN_PRECISIONS)
        one_of(s, "grad_reduce", self.grad_reduce, GRAD_REDUCE)
        if self.vpp > 1 and self.pp == 1:
            raise SpecError(s, "vpp", "interleaving (vpp > 1) needs pipeline parallelism (pp > 1)")
        if self.uneven and self.pp == 1:
            raise SpecError(s, "first_stage_layers", "uneven stages need pp > 1")

    @property
    def uneven(self) -> bool:
        return bool(self.first_stage_layers or self.last_stage_layers)

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def microbatches(self) -> int:
        """Micro-batches per pipeline per step: global_batch / (micro_batch · dp)."""
        return self.global_batch // (self.micro_batch * self.dp)

    def check(self, model: ModelSpec, gpus: int | None = None) -> None:
        """Refuse, with the reason, a layout that cannot run ``model`` on ``gpus`` GPUs."""
        if gpus is not None and self.gpus != gpus:
            raise LayoutError(
                f"tp·pp·cp·dp = {self.tp}·{self.pp}·{self.cp}·{self.dp} = {self.gpus}, "
                f"but the run has {gpus} GPUs; change dp to {gpus / (self.tp * self.pp * self.cp):g}"
                if gpus % (self.tp * self.pp * self.cp) == 0
                else f"tp·pp·cp = {self.tp * self.pp * self.cp} does not divide {gpus} GPUs"
            )
        heads_per_tp = model.heads if model.attention == "mla" else model.n_kv_heads
        if model.heads % self.tp:
            raise LayoutError(f"tp={self.tp} does not divide the {model.heads} attention heads")
        if heads_per_tp % self.tp and self.tp % heads_per_tp:
            raise LayoutError(
                f"tp={self.tp} and the {heads_per_tp} KV heads: one must divide the other"
            )
        self._check_stages(model.layers)
        if model.is_moe:
            if model.experts % self.ep:
                raise LayoutError(f"ep={self.ep} does not divide the {model.experts} experts")
            if (self.dp * self.cp) % self.ep:
                raise LayoutError(
                    f"ep={self.ep} must divide dp·cp = {self.dp * self.cp} (experts are "
                    "sharded inside the data-parallel group)"
                )
        elif self.ep != 1:
            raise LayoutError(f"ep={self.ep} needs an MoE model; {model.name} is dense")
        if model.seq_len % (2 * self.cp) and self.cp > 1:
            raise LayoutError(
                f"cp={self.cp}: sequence length {model.seq_len} must split into 2·cp chunks"
            )
        if self.global_batch % (self.micro_batch * self.dp):
            raise LayoutError(
                f"global batch {self.global_batch} is not a multiple of micro_batch·dp = "
                f"{self.micro_batch}·{self.dp} = {self.micro_batch * self.dp}"
            )
        if self.vpp > 1 and self.microbatches % self.pp:
            raise LayoutError(
                f"interleaved pipeline: {self.microbatches} micro-batches per step must be a "
                f"multiple of pp={self.pp}"
            )

    def stage_layers(self, layers: int) -> tuple[int, int, int]:
        """Layers on the (first, middle, last) pipeline stages, as Megatron-Core builds them
        (``get_num_layers_to_build``): the first/last stage's count when set, the rest split
        evenly over the remaining stages (0 middle layers when pp = 2)."""
        f, last = self.first_stage_layers, self.last_stage_layers
        inner = self.pp - (f > 0) - (last > 0)
        mid = where(inner > 0, (layers - f - last) // vmax(inner, 1), 0)
        return where(f > 0, f, mid), mid, where(last > 0, last, mid)

    def _check_stages(self, layers: int) -> None:
        if not self.uneven:
            chunks = self.pp * self.vpp
            if layers % chunks:
                raise LayoutError(
                    f"pp·vpp = {self.pp}·{self.vpp} = {chunks} does not divide the "
                    f"{layers} layers; give --first-stage-layers/--last-stage-layers for "
                    "uneven stages"
                )
            return
        f, last = self.first_stage_layers, self.last_stage_layers
        inner = self.pp - (f > 0) - (last > 0)
        rest = layers - f - last
        if rest < 0 or (inner == 0 and rest) or (inner > 0 and (rest <= 0 or rest % inner)):
            raise LayoutError(
                f"uneven stages: {layers} layers less first {f} and last {last} leave {rest} "
                f"for {inner} other stages, which must split evenly (at least 1 each)"
            )
        if any(n % self.vpp for n in self.stage_layers(layers) if n):
            raise LayoutError(
                f"uneven stages {self.stage_layers(layers)}: every stage's layers must be a "
                f"multiple of vpp={self.vpp}"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayoutSpec:
        return from_dict(cls, data, "layout")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> LayoutSpec:
        return dataclasses.replace(self, **changes)
