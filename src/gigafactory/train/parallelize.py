"""How the model is spread over ranks, kept apart from what the model is (torchtitan style).

* ``Runtime``: this process's place in the job (rank, world size, device), read from the
  environment torchrun sets; gloo on CPU, NCCL on GPU.
* ``ParallelDims``: the one object that owns and validates the layout (tp, pp, vpp, ep, dp,
  global and micro batch), via the planner's ``LayoutSpec.check`` and the trainer's own
  limits, each with an error that names the fix.
* ``build_mesh``: the ``DeviceMesh`` (pp, dp/ep, ep, tp) of that layout.
* ``parallelize``: tensor parallelism (``tensor_parallel.py``), expert parallelism
  (``expert_parallel.py``), pipeline stages (``pipeline.py``), optional ``torch.compile`` of
  each block, then FSDP2 ``fully_shard`` of each block and of the root over the data-parallel
  mesh, with bf16 parameters and fp32 gradient reduction on GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh

from gigafactory.errors import LayoutError
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.train.errors import TrainConfigError
from gigafactory.train.expert_parallel import apply_expert_parallel
from gigafactory.train.model import Transformer, fill_rope_tables, initial_value
from gigafactory.train.pipeline import Stages, build_schedule, build_stages, stage_ids
from gigafactory.train.tensor_parallel import apply_tensor_parallel

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
    """The layout of a training run: world size = tp·pp·dp; experts split ``ep`` ways inside
    the data-parallel group; ``vpp`` pipeline chunks per rank. The same ``LayoutSpec`` the
    planner evaluates (``layout()``), checked by the planner's own ``LayoutSpec.check`` plus
    the limits of this trainer, in ``validate``. ``cp`` and uneven stages come only from a
    plan, and are refused there (with the reason)."""

    world_size: int
    dp: int
    global_batch: int
    micro_batch: int
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    ep: int = 1
    cp: int = 1
    uneven_stages: tuple[int, int] = (0, 0)  # a plan's first/last stage layers (0: even)

    @classmethod
    def build(
        cls,
        world_size: int,
        global_batch: int,
        micro_batch: int = 0,
        dp: int = 0,
        tp: int = 1,
        pp: int = 1,
        vpp: int = 1,
        ep: int = 1,
    ) -> ParallelDims:
        """``dp`` 0 means world / (tp·pp); ``micro_batch`` 0 means global_batch / dp (no
        gradient accumulation)."""
        if dp == 0 and tp > 0 and pp > 0:
            dp = max(1, world_size // (tp * pp))
        if micro_batch == 0 and dp > 0 and global_batch % dp == 0:
            micro_batch = global_batch // dp
        return cls(world_size, dp, global_batch, micro_batch or 1, tp, pp, vpp, ep)

    @classmethod
    def from_layout(cls, layout: LayoutSpec, world_size: int) -> ParallelDims:
        """The degrees and batch of a planner's layout (``gigafactory plan --json``)."""
        return cls(
            world_size, layout.dp, layout.global_batch, layout.micro_batch,
            layout.tp, layout.pp, layout.vpp, layout.ep, layout.cp,
            (layout.first_stage_layers, layout.last_stage_layers),
        )  # fmt: skip

    @property
    def grad_accum(self) -> int:
        """Micro-batches per rank per step: global_batch / (micro_batch · dp)."""
        return self.global_batch // (self.micro_batch * self.dp)

    def layout(self, precision: str = "fp32") -> LayoutSpec:
        return LayoutSpec(
            tp=self.tp, pp=self.pp, dp=self.dp, vpp=self.vpp, ep=self.ep, sharding="fsdp",
            micro_batch=self.micro_batch, global_batch=self.global_batch, precision=precision,
        )  # fmt: skip

    def validate(self, model: ModelSpec, seq: int = 0) -> None:
        """Refuse, with the fix, a layout the job cannot run: every check in one place (the
        sequence length ``seq``, 0 for the model's, included)."""
        if seq > model.seq_len:
            raise LayoutError(
                f"--seq {seq} is longer than {model.name}'s seq_len {model.seq_len}; use --seq "
                f"{model.seq_len} or less"
            )
        if self.cp > 1:
            raise LayoutError(
                f"the plan uses context parallelism (cp={self.cp}), which the trainer does not "
                "run (PyTorch's context_parallel shards only CUDA SDPA and FlexAttention, not "
                "the CPU attention; see docs/train.md); plan with --cp 1"
            )
        if any(self.uneven_stages):
            first, last = self.uneven_stages
            raise LayoutError(
                f"the plan has uneven pipeline stages (first {first}, last {last} layers); the "
                "trainer cuts pp·vpp equal stages: plan without --first-stage-layers/"
                "--last-stage-layers"
            )
        degrees = {"tp": self.tp, "pp": self.pp, "vpp": self.vpp, "ep": self.ep, "dp": self.dp}
        for name, value in (*degrees.items(), ("batch", self.global_batch)):
            if value < 1:
                raise LayoutError(f"--{name} {value}: must be a positive integer")
        if self.micro_batch < 1:
            raise LayoutError(f"--micro-batch {self.micro_batch}: must be a positive integer")
        if self.tp * self.pp * self.dp != self.world_size:
            fix = (
                f"set --dp {self.world_size // (self.tp * self.pp)}"
                if self.world_size % (self.tp * self.pp) == 0
                else f"use tp·pp dividing {self.world_size}"
            )
            raise LayoutError(
                f"dp={self.dp} but the job has {self.world_size} process(es) and "
                f"tp·pp·dp = {self.tp}·{self.pp}·{self.dp} = {self.tp * self.pp * self.dp}; "
                f"{fix} (or launch torchrun --nproc_per_node {self.tp * self.pp * self.dp})"
            )
        if self.global_batch % self.dp:
            raise LayoutError(
                f"global batch {self.global_batch} does not split over dp={self.dp} ranks; "
                f"use a multiple of {self.dp}"
            )
        self.layout().check(model, gpus=self.world_size)
        self._check_trainer_limits(model, seq or model.seq_len)

    def _check_trainer_limits(self, model: ModelSpec, seq: int) -> None:
        """What the planner allows but this trainer does not build (yet)."""
        t = self.tp
        if t > 1:
            if model.n_kv_heads % t:
                raise LayoutError(
                    f"tp={t}: the trainer splits the {model.n_kv_heads} KV heads over the tp "
                    "ranks (it does not replicate them); use a tp that divides them"
                )
            widths = {"ffn width": model.ffn_width, "vocabulary": model.vocab}
            if model.is_moe:
                widths["expert width"] = model.moe_ffn
            widths["sequence length"] = seq
            for what, n in widths.items():
                if n % t:
                    raise LayoutError(f"tp={t} does not divide the {what} {n}")
            if model.position == "learned":
                raise LayoutError("tp > 1 needs RoPE positions (learned ones are not split)")
            if model.is_moe and model.bias:
                raise LayoutError("tp > 1 with expert biases is not supported; use tp 1")
        if self.pp > 1 and self.grad_accum < self.pp:
            raise LayoutError(
                f"pp={self.pp} needs at least {self.pp} micro-batches per step, has "
                f"{self.grad_accum} (global batch / (micro-batch·dp)); lower --micro-batch"
            )


def planned_state_bytes(spec: ModelSpec, dims: ParallelDims) -> tuple[float, float]:
    """The planner's (parameter bytes, gradient bytes) per rank at rest for this layout: its
    parameter split (``plan.shard.params_per_gpu``) sharded over the dp ranks (FSDP2), in the
    fp32 this trainer keeps parameters and gradients in (FSDP2 casts to bf16 per layer)."""
    from gigafactory.plan.memory import grad_bytes_per_param, sharded_params, weight_bytes_per_param
    from gigafactory.plan.shard import params_per_gpu

    n = sharded_params(params_per_gpu(spec, dims.layout("fp32")))
    return n * weight_bytes_per_param("fp32"), n * grad_bytes_per_param("fp32")


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPU, fp32 on CPU."""
    if precision not in PRECISIONS:
        raise TrainConfigError(
            f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}"
        )
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def build_mesh(dims: ParallelDims, device_type: str) -> tuple[DeviceMesh, DeviceMesh]:
    """The job's ``DeviceMesh``: (pp, dp/ep, ep, tp), tp innermost (neighbouring ranks, the
    fastest links), with dp the flattened (dp/ep, ep) — experts are split inside the
    data-parallel group, as the planner's LayoutSpec says. Returns it and its dp mesh."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(
        device_type,
        (dims.pp, dims.dp // dims.ep, dims.ep, dims.tp),
        mesh_dim_names=("pp", "dp_mod_ep", "ep", "tp"),
    )
    return mesh, mesh["dp_mod_ep", "ep"]._flatten("dp")


@dataclass
class GradientSum:
    """Parameters whose gradients are partial sums over ``group`` after backward, summed there
    before the optimizer step (Megatron-LM's ``finalize_model_grads``)."""

    params: list[nn.Parameter]
    group: dist.ProcessGroup


@dataclass
class Parallelized:
    """A model spread over the job: the modules this rank holds (the model, or its pipeline
    stages) and what a step needs to drive them."""

    parts: list[nn.Module]
    dims: ParallelDims
    mesh: DeviceMesh | None = None
    dp_mesh: DeviceMesh | None = None  # the flattened (dp/ep, ep) dimensions
    schedule: Any = None  # a torch.distributed.pipelining schedule when pp > 1
    first_stage: bool = True
    last_stage: bool = True
    grad_sums: list[GradientSum] = field(default_factory=list)
    copies: list[nn.Parameter] = field(default_factory=list)  # counted once, on another rank

    @property
    def dp_rank(self) -> int:
        return self.dp_mesh.get_local_rank() if self.dp_mesh is not None else 0

    @property
    def state_module(self) -> nn.Module:
        """One module holding this rank's parameters under their full-model names."""
        return self.parts[0] if len(self.parts) == 1 else Stages(self.parts)  # type: ignore[arg-type]

    def parameters(self) -> list[nn.Parameter]:
        return [p for part in self.parts for p in part.parameters()]

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [item for part in self.parts for item in part.named_parameters()]

    def group(self, dim: str) -> dist.ProcessGroup | None:
        """The process group of one mesh dimension, None when it has one rank."""
        if self.mesh is None:
            return None
        sub = self.dp_mesh if dim == "dp" else self.mesh[dim]
        return None if sub is None or sub.size() == 1 else sub.get_group()


def parallelize(
    model: Transformer, runtime: Runtime, dims: ParallelDims, precision: str, compile: bool = False
) -> Parallelized:
    """Apply the layout to a model, outside the model file (torchtitan's order): tensor
    parallelism, expert parallelism, pipeline stages, ``torch.compile`` of each block, FSDP2
    over the data-parallel ranks; then, for a model built on the meta device, each rank
    allocates and initialises only what it holds (``materialize``).

    Tied embeddings stay in the root FSDP group, so the shared weight is one sharded parameter
    (with pipeline stages, a copy on the last stage: see ``pipeline.py``).
    """
    mesh, dp_mesh = build_mesh(dims, runtime.device.type) if runtime.distributed else (None, None)
    if mesh is not None and dims.tp > 1:
        apply_tensor_parallel(model, mesh["tp"], experts_split=dims.ep == 1)
    if mesh is not None and dims.ep > 1:
        apply_expert_parallel(model, mesh["ep"], mesh["ep", "tp"] if dims.tp > 1 else None)
    par = Parallelized([model], dims, mesh, dp_mesh)
    if mesh is not None and dims.pp > 1:
        pp_rank = mesh["pp"].get_local_rank()
        ids = stage_ids(pp_rank, dims.pp, dims.vpp)
        par.parts = list(build_stages(model, pp_rank, dims.pp, dims.vpp))
        par.first_stage, par.last_stage = 0 in ids, dims.pp * dims.vpp - 1 in ids
    for part in par.parts:
        if compile:
            for block in _blocks(part):
                block.compile()  # in place: parameter names (and checkpoints) stay the same
        if mesh is not None and dp_mesh is not None:
            _fully_shard(part, mesh, dp_mesh, dims, precision)
    if model.rope_cos.is_meta:
        materialize(par, model.spec, model.init_seed, runtime.device)
    if mesh is not None:
        _gradient_sums(par, model.spec)
    if mesh is not None and dims.pp > 1:
        par.schedule = build_schedule(
            par.parts, ids, dims.pp * dims.vpp, dims.grad_accum, mesh["pp"]
        )
    return par


@torch.no_grad()
def materialize(par: Parallelized, spec: ModelSpec, seed: int, device: torch.device) -> None:
    """Allocate the parameters this rank holds on ``device`` and give them exactly the values
    of a one-process initialisation: each parameter's full value from ``initial_value`` (its
    own generator, one parameter at a time), of which the rank keeps its shard."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for part in par.parts:
        part.to_empty(device=device)
        for name, p in part.named_parameters():
            full = initial_value(name, p.shape, spec, seed, device, p.dtype)
            if isinstance(p, DTensor):  # the shard of the full value; no communication
                full = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
                p.to_local().copy_(full.to_local())
            else:
                p.copy_(full)
        fill_rope_tables(part, spec)


def _gradient_sums(par: Parallelized, spec: ModelSpec) -> None:
    """The gradients summed after backward: (1) a tied embedding held by the first and the
    last pipeline stage, over those two ranks (the last stage's copy then stays out of the
    gradient norm); (2) with tp and ep together, the MoE layers' router and shared experts:
    replicated over tp, each tp rank computed its part from its sequence shard."""
    assert par.mesh is not None
    named = par.named_parameters()
    if par.dims.pp > 1 and spec.tied_embeddings:
        group = _first_and_last_stage_group(par.mesh)
        tied = [p for name, p in named if name == "tok_emb.weight"]
        if group is not None and tied:
            par.grad_sums.append(GradientSum(tied, group))
            if not par.first_stage:
                par.copies.extend(tied)
    tp = par.group("tp")
    if tp is not None and par.dims.ep > 1:
        moe = [i for i in range(spec.layers) if spec.is_moe_layer(i)]
        replicated = tuple(f"blocks.{i}.mlp.{part}." for i in moe for part in ("router", "shared"))
        held = [p for name, p in named if name.startswith(replicated)]
        if held:
            par.grad_sums.append(GradientSum(held, tp))


def _first_and_last_stage_group(mesh: DeviceMesh) -> dist.ProcessGroup | None:
    """The process group of this rank's first and last pipeline rank with the same dp, ep
    and tp coordinates (every rank creates every such group, as ``new_group`` requires)."""
    ends = mesh.mesh[[0, -1]].reshape(2, -1)  # (2, ranks of one stage)
    mine = None
    for column in ends.T.tolist():
        group = dist.new_group(column)
        if dist.get_rank() in column:
            mine = group
    return mine


@torch.no_grad()
def sum_partial_gradients(par: Parallelized) -> None:
    """Sum, over their groups, the gradients listed in ``par.grad_sums`` (one all-reduce per
    group). The local shards line up: every rank of a group shards the parameter alike."""
    from torch.distributed.tensor import DTensor

    for gs in par.grad_sums:
        for p in gs.params:  # a parameter unused on this rank still takes part
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        local = [g.to_local() if isinstance(g, DTensor) else g for g in (p.grad for p in gs.params)]
        flat = torch.cat([t.reshape(-1) for t in local])
        dist.all_reduce(flat, group=gs.group)
        offset = 0
        for t in local:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _blocks(part: nn.Module) -> list[nn.Module]:
    blocks = part.blocks  # a ModuleList (whole model) or a ModuleDict (pipeline stage)
    return list(blocks.values() if isinstance(blocks, nn.ModuleDict) else blocks)  # type: ignore[operator]


def _fully_shard(
    part: nn.Module, mesh: DeviceMesh, dp_mesh: DeviceMesh, dims: ParallelDims, precision: str
) -> None:
    """FSDP2 of each block and of the root over the dp ranks; with expert parallelism the
    experts are sharded over the dp/ep ranks that hold the same experts, their gradients
    averaged over all dp ranks (each expert saw tokens from all of them)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    blocks = _blocks(part)
    for i, block in enumerate(blocks):
        # the last block's parameters are needed at once by backward: no reshard after forward
        reshard = i < len(blocks) - 1
        if dims.ep > 1 and block.is_moe:
            experts = fully_shard(
                block.mlp.experts, mesh=mesh["dp_mod_ep"], mp_policy=mp,
                reshard_after_forward=reshard,
            )  # fmt: skip
            experts.set_gradient_divide_factor(float(dims.dp))
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(part, mesh=dp_mesh, mp_policy=mp)


def clip_grad_norm(par: Parallelized, max_norm: float) -> float:
    """Clip the gradients of every rank's parameters to a global L2 norm of ``max_norm`` and
    return the norm before clipping. Parameters live on several meshes (FSDP×TP, experts on
    dp/ep×ep, a router on dp alone) and pipeline stages on several ranks: each mesh's norm is
    reduced over that mesh, the squares summed, then summed over the pipeline ranks. A tied
    embedding's copy on the last stage is clipped but counted once, on the first stage."""
    from torch.distributed.tensor import DTensor

    copies = {id(p) for p in par.copies}
    by_mesh: dict[Any, list[torch.Tensor]] = {}
    for p in par.parameters():
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            by_mesh.setdefault((key, id(p) in copies), []).append(p.grad)
    device = next(iter(par.parameters())).device
    squares = torch.zeros((), device=device)
    for (_, copy), grads in by_mesh.items():
        if copy:
            continue
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        squares = squares + norm.float() ** 2
    pp = par.group("pp")
    if pp is not None:
        dist.all_reduce(squares, group=pp)
    total = float(squares.sqrt())
    coef = min(1.0, max_norm / (total + 1e-6))
    if coef < 1.0:
        for grads in by_mesh.values():
            torch._foreach_mul_(grads, coef)
    return total


def mean_over_data_parallel(values: torch.Tensor, par: Parallelized) -> torch.Tensor:
    """Per-step (loss, aux) as every rank reports them: summed over the pipeline stages (the
    loss is the last stage's, the others hold 0; the aux loss each stage's share) and averaged
    over the dp ranks (tp ranks already agree)."""
    pp, dp = par.group("pp"), par.group("dp")
    if pp is not None:
        dist.all_reduce(values, group=pp)
    if dp is not None:
        dist.all_reduce(values, group=dp)
        values = values / par.dims.dp
    return values


@contextlib.contextmanager
def autocast(runtime: Runtime, precision: str) -> Iterator[None]:
    """bf16 autocast where FSDP2 does not already cast the parameters (single process)."""
    if precision == "bf16" and not runtime.distributed:
        with torch.autocast(runtime.device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
