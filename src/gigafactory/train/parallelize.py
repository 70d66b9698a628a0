"""How the model is spread over ranks, kept apart from what the model is (torchtitan style).

* ``Runtime``: this process's place in the job (rank, world size, device), read from the
  environment torchrun sets; gloo on CPU, NCCL on GPU.
* ``ParallelDims``: the one object that owns and validates the layout (world size, data
  parallel degree, global and micro batch), via ``LayoutSpec.check`` and the trainer's own
  limits, each with an error that names the fix.
* ``parallelize``: optional ``torch.compile`` of each block, then FSDP2 ``fully_shard`` of
  each block and of the root over the data-parallel mesh, with bf16 parameters and fp32
  gradient reduction on GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from gigafactory.errors import LayoutError
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.train.errors import TrainConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class Runtime:
    """This process in the job: rank, world size, device and whether a process group is up."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def init_runtime(device: str = "auto") -> Runtime:
    """Join the process group torchrun set up (if any) and pick this rank's device."""
    if device not in DEVICES:
        raise TrainConfigError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainConfigError("--device cuda: no CUDA GPU is visible; use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    distributed = launched_by_torchrun()
    if distributed and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None
        )
    return Runtime(rank, world, local_rank, dev, distributed)


def shutdown(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class ParallelDims:
    """The layout of a training run. The trainer shards over data-parallel ranks only (FSDP2);
    tensor, pipeline, context and expert parallelism are modelled by the planner."""

    world_size: int
    dp: int
    global_batch: int
    micro_batch: int

    @classmethod
    def build(
        cls, world_size: int, global_batch: int, micro_batch: int = 0, dp: int = 0
    ) -> ParallelDims:
        """``dp`` 0 means every rank; ``micro_batch`` 0 means global_batch / dp (no
        gradient accumulation)."""
        dp = dp or world_size
        if micro_batch == 0 and dp and global_batch % dp == 0:
            micro_batch = global_batch // dp
        return cls(world_size, dp, global_batch, micro_batch or 1)

    @property
    def grad_accum(self) -> int:
        """Micro-batches per rank per step: global_batch / (micro_batch · dp)."""
        return self.global_batch // (self.micro_batch * self.dp)

    def layout(self) -> LayoutSpec:
        return LayoutSpec(
            dp=self.dp,
            sharding="fsdp",
            micro_batch=self.micro_batch,
            global_batch=self.global_batch,
        )

    def validate(self, model: ModelSpec) -> None:
        """Refuse a layout the world size cannot hold, with the fix."""
        if self.global_batch < 1 or self.micro_batch < 1 or self.dp < 1:
            raise LayoutError(
                f"batch {self.global_batch}, micro-batch {self.micro_batch}, dp {self.dp}: "
                "each must be a positive integer"
            )
        if self.dp != self.world_size:
            raise LayoutError(
                f"dp={self.dp} but the job has {self.world_size} process(es); the trainer "
                f"shards over data-parallel ranks only, so set --dp {self.world_size} (or "
                f"launch torchrun --nproc_per_node {self.dp})"
            )
        if self.global_batch % self.dp:
            raise LayoutError(
                f"global batch {self.global_batch} does not split over dp={self.dp} ranks; "
                f"use a multiple of {self.dp}"
            )
        self.layout().check(model, gpus=self.world_size)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise TrainConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def parallelize(
    model: nn.Module, runtime: Runtime, precision: str, compile: bool = False
) -> nn.Module:
    """Compile each block (optional), then shard blocks and root with FSDP2 over all ranks.

    Tied embeddings stay in the root group, so the shared weight is one sharded parameter.
    """
    blocks: nn.ModuleList = model.blocks  # type: ignore[assignment]
    if compile:
        for block in blocks:
            block.compile()  # in place: parameter names (and checkpoints) stay the same
    if not runtime.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(runtime.device.type, (runtime.world_size,), mesh_dim_names=("dp",))
    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for i, block in enumerate(blocks):
        # the last block's parameters are needed at once by backward: no reshard after forward
        fully_shard(block, mesh=mesh, mp_policy=mp, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


@contextlib.contextmanager
def autocast(runtime: Runtime, precision: str) -> Iterator[None]:
    """bf16 autocast where FSDP2 does not already cast the parameters (single process)."""
    if precision == "bf16" and not runtime.distributed:
        with torch.autocast(runtime.device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
