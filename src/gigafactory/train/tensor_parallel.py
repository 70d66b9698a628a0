"""Tensor parallelism with sequence parallelism (Megatron-LM: Shoeybi et al. 2019; Korthikanti et
al. 2022), applied to a built ``Transformer`` with DTensor plans, outside the model file.

Between blocks the residual stream is split along the sequence (each of the t ranks holds T/t
positions: ``Shard(1)``), so norms run on a sequence shard (``SequenceParallel``). Each
attention and FFN all-gathers its input, computes its share of heads or of the FFN width
(column-parallel Q, K, V, gate and up; row-parallel O and down) and reduce-scatters its
output back to sequence shards. Query and KV heads are split t ways (t divides the KV heads).
The embedding is split along the vocabulary (row-parallel); the output head multiplies the
all-gathered last states by its vocabulary shard and all-gathers the logits.

MoE layers, tp alone: the router runs replicated on the all-gathered tokens (unchanged); each
expert's FFN width is split t ways (``expert_tensor_parallel``); the partial expert outputs
are summed with one all-reduce before the gates weigh them, and the input's gradient is
all-reduced once (Megatron's f and g operators), so router, gates and the load-balancing loss
see exactly the one-rank values.

MoE layers with tp and ep together (``experts_split=False``): the layer stays on the sequence
shard, no all-gather. Each tp rank routes its T/t positions and dispatches them over the ep
group (the ep ranks of the same tp coordinate); ``expert_parallel.py`` splits the experts over
ep and their width over tp. The load-balancing loss gathers the router probabilities and
expert counts of the whole micro-batch over tp first (``_GatherInForward``: its backward keeps
a rank's own rows, as every tp rank computes the same loss), so it equals the one-rank value.
The router and any shared experts (replicated over tp) hold partial gradients, each tp rank's
from its own positions, summed over tp after backward (``parallelize.sum_partial_gradients``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from gigafactory.train.expert_parallel import EXPERT_WIDTH_DIM, shard_parameters


class _AllReduceInBackward(torch.autograd.Function):
    """Megatron's f: identity forward; the gradient summed over the group (each rank's
    partial gradient from its share of the experts)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _AllReduceInForward(torch.autograd.Function):
    """Megatron's g: partial outputs summed over the group; identity backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _GatherInForward(torch.autograd.Function):
    """Rows of every rank of the group concatenated (dim 0); backward: this rank's rows of the
    gradient (Megatron's gather_from_sequence_parallel_region without reduction: every rank
    computes the same function of the gathered rows)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(group), x.size(0)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows], None


def gather_routing(balance: nn.Module, mesh: DeviceMesh) -> None:
    """Feed ``balance`` (a ``LoadBalancing``) the router probabilities and expert counts of
    the whole micro-batch, whose positions are split over ``mesh``."""
    group = mesh.get_group()

    def gather(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        probs, counts = args
        counts = counts.clone()
        dist.all_reduce(counts, group=group)
        return _GatherInForward.apply(probs, group), counts

    balance.register_forward_pre_hook(gather)


def expert_tensor_parallel(experts: nn.Module, mesh: DeviceMesh) -> None:
    """Split every expert's FFN width over ``mesh``; the experts' output is all-reduced."""
    group = mesh.get_group()

    def partition(name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        if not name:  # only the Experts module itself holds the stacked weights
            shard_parameters(module, mesh, lambda pname: [Shard(EXPERT_WIDTH_DIM[pname])])

    def inputs(module: nn.Module, args: tuple[Any, ...], mesh: DeviceMesh) -> tuple[Any, ...]:
        x, counts = args
        return _AllReduceInBackward.apply(x, group), counts

    def outputs(module: nn.Module, y: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
        return _AllReduceInForward.apply(y, group)

    distribute_module(experts, mesh, partition, inputs, outputs)


def apply_tensor_parallel(model: nn.Module, mesh: DeviceMesh, experts_split: bool = True) -> None:
    """Apply the plan above to a ``Transformer`` (in place) over the 1-D tensor-parallel mesh;
    ``experts_split`` False leaves MoE layers on the sequence shard (ep splits the experts)."""
    top: dict[str, Any] = {
        "tok_emb": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(use_local_output=True),
        # the last states all-gathered; the logits, split by vocabulary, gathered for the loss
        "head": PrepareModuleInputOutput(
            input_layouts=(Shard(1), None),
            desired_input_layouts=(Replicate(), None),
            output_layouts=Shard(-1),
            desired_output_layouts=Replicate(),
        ),
    }
    if model.lm_head is not None:
        top["lm_head"] = ColwiseParallel()  # its weight split by vocabulary, as the embedding's
    parallelize_module(model, mesh, top, src_data_rank=None)
    for block in model.blocks:
        plan: dict[str, Any] = {
            "attn_norm": SequenceParallel(use_local_output=True),
            "attn": PrepareModuleInput(
                input_layouts=(Shard(1), None, None, None),
                desired_input_layouts=(Replicate(), None, None, None),
            ),
            "attn.q": ColwiseParallel(),
            "attn.k": ColwiseParallel(),
            "attn.v": ColwiseParallel(),
            "attn.o": RowwiseParallel(output_layouts=Shard(1)),
            "mlp_norm": SequenceParallel(use_local_output=True),
        }
        for norm in ("attn_post_norm", "mlp_post_norm"):
            if not isinstance(getattr(block, norm), nn.Identity):
                plan[norm] = SequenceParallel(use_local_output=True)
        if block.is_moe and not experts_split:
            pass  # the MoE layer takes and returns this rank's sequence shard as it is
        elif block.is_moe:
            plan["mlp"] = PrepareModuleInputOutput(
                input_layouts=(Shard(1),),
                desired_input_layouts=(Replicate(),),
                use_local_input=True,
                output_layouts=(Replicate(), None),
                desired_output_layouts=(Shard(1), None),
            )
            for i, _ in enumerate(block.mlp.shared):
                plan.update(_ffn_plan(f"mlp.shared.{i}", block.mlp.shared[i], Replicate()))
        else:
            plan["mlp"] = PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)
            )
            plan.update(_ffn_plan("mlp", block.mlp, Shard(1)))
        parallelize_module(block, mesh, plan, src_data_rank=None)
        if block.is_moe and experts_split:
            expert_tensor_parallel(block.mlp.experts, mesh)
        elif block.is_moe:
            gather_routing(block.mlp.balance, mesh)


def _ffn_plan(prefix: str, mlp: nn.Module, output: Any) -> dict[str, Any]:
    """Column-parallel gate and up, row-parallel down (its output reduced to ``output``)."""
    plan: dict[str, Any] = {f"{prefix}.up": ColwiseParallel()}
    if mlp.gate is not None:
        plan[f"{prefix}.gate"] = ColwiseParallel()
    plan[f"{prefix}.down"] = RowwiseParallel(output_layouts=output)
    return plan
