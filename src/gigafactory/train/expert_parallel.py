"""Expert parallelism (GShard, Lepikhin et al. 2020; Megatron-Core's token dispatcher), applied
outside the model file to the ``Experts`` of each MoE block.

The E experts are split over the ``ep`` ranks of an expert-parallel group (E/ep each, a
``Shard(0)`` DTensor, so checkpoints reshard). The router is unchanged and runs on each rank's
own tokens; the ``Experts`` module receives them grouped by expert with ``counts`` (E,). Its
input is dispatched with one all-to-all (each rank sends every expert's rows to the rank that
holds it), regrouped by local expert for the grouped GEMMs, and the outputs go back with the
reverse all-to-all into the original order. The split sizes of an all-to-all are host
integers: the counts are exchanged first (one small all-to-all) and read once per layer.

With tensor parallelism as well (Megatron-Core's default expert tensor parallelism, ETP = TP,
as the planner counts it): each expert's FFN width is also split over the tp ranks, a
(Shard(0), Shard(width)) DTensor on the (ep, tp) mesh. A tp rank routes and dispatches only
its sequence shard; after the ep all-to-all the rows of the tp ranks are gathered (so each
computes its width slice for all of them), and the partial outputs are summed back to each
tp rank's own rows (a reduce-scatter) before the reverse all-to-all. Both are all-to-alls
with uneven splits, differentiable (``all_to_all_single_autograd``): the gather's backward
sums the input gradients over tp, the reduce-scatter's gathers the output gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.placement_types import Placement

# Experts' weights split along the FFN width F: (E, C, F) on F, (E, F, C) on F, biases (E, F).
EXPERT_WIDTH_DIM = {"w_gate": 2, "w_up": 2, "w_down": 1, "b_gate": 1, "b_up": 1}


def shard_parameters(
    module: nn.Module, mesh: DeviceMesh, placements: Callable[[str], list[Placement]]
) -> None:
    """Replace each of ``module``'s own parameters (not its children's) by a DTensor over
    ``mesh`` placed as ``placements(name)``. Each rank keeps its shard of the tensor it
    holds: every rank built the same weights from the same seed, so nothing is sent
    (``src_data_rank=None``)."""
    for pname, param in list(module.named_parameters(recurse=False)):
        sharded = distribute_tensor(param, mesh, placements(pname), src_data_rank=None)
        module.register_parameter(pname, nn.Parameter(sharded))


def regroup(counts: torch.Tensor, rows: int) -> torch.Tensor:
    """The permutation that sorts rows arriving from several ranks, each already grouped by
    expert (``counts`` (ranks, experts): rows per rank and expert), into one grouping by
    expert."""
    experts = torch.arange(counts.size(1), device=counts.device).repeat(counts.size(0))
    expert_of_row = experts.repeat_interleave(counts.flatten(), output_size=rows)
    return expert_of_row.argsort(stable=True)


class ExpertDispatch:
    """The all-to-all dispatch and combine around one ``Experts`` module."""

    def __init__(self, mesh: DeviceMesh, experts: int):
        self.mesh, self.ep = mesh, mesh.size()
        self.local = experts // self.ep  # experts per rank
        self.group = mesh.get_group()
        self._state: tuple[torch.Tensor, list[int], list[int]] | None = None

    def partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        if not name:  # the Experts module itself holds the stacked weights
            shard_parameters(module, mesh, lambda _name: [Shard(0)])

    def dispatch(self, module: nn.Module, args: tuple[Any, ...], mesh: DeviceMesh) -> tuple:
        """x (M, C) grouped by global expert, counts (E,) → this rank's experts' rows, grouped
        by local expert, and their counts (E/ep,)."""
        x, counts = args
        # received[j, e]: rows rank j sends to my local expert e
        received = funcol.all_to_all_single(counts, None, None, self.group).view(
            self.ep, self.local
        )
        send = counts.view(self.ep, self.local).sum(1).tolist()  # rows to each rank
        recv = received.sum(1).tolist()  # rows from each rank
        rows = funcol.all_to_all_single_autograd(x, recv, send, self.group)  # by source rank
        order = regroup(received, rows.size(0))  # rows regrouped by local expert
        self._state = (order, send, recv)
        return rows[order], received.sum(0)

    def combine(self, module: nn.Module, y: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
        """The experts' outputs back to the ranks and the order their rows came from."""
        assert self._state is not None
        order, send, recv = self._state
        self._state = None
        back = order.argsort()  # the inverse permutation
        return funcol.all_to_all_single_autograd(y[back], send, recv, self.group)


class ExpertTensorGather:
    """Around the experts of one ep rank, under tensor parallelism: the dispatched rows of every
    tp rank gathered (uneven), regrouped by expert; the partial outputs summed back to each tp
    rank's rows."""

    def __init__(self, mesh: DeviceMesh):
        self.group, self.tp = mesh.get_group(), mesh.size()
        self._state: tuple[torch.Tensor, int, list[int]] | None = None

    def gather(self, module: nn.Module, args: tuple[Any, ...]) -> tuple:
        x, counts = args  # this tp rank's rows, grouped by local expert; counts (E/ep,)
        every = [torch.empty_like(counts) for _ in range(self.tp)]
        dist.all_gather(every, counts, group=self.group)
        counts_all = torch.stack(every)  # (tp, E/ep)
        sizes = counts_all.sum(1).tolist()  # rows of each tp rank
        n = x.size(0)
        rows = funcol.all_to_all_single_autograd(
            x.repeat(self.tp, 1), sizes, [n] * self.tp, self.group
        )
        order = regroup(counts_all, rows.size(0))
        self._state = (order, n, sizes)
        return rows[order], counts_all.sum(0)

    def scatter(self, module: nn.Module, args: tuple[Any, ...], y: torch.Tensor) -> torch.Tensor:
        assert self._state is not None
        order, n, sizes = self._state
        self._state = None
        partial = funcol.all_to_all_single_autograd(
            y[order.argsort()], [n] * self.tp, sizes, self.group
        )
        return partial.view(self.tp, n, -1).sum(0)  # (n, C): my rows, summed over tp


def apply_expert_parallel(
    model: nn.Module, mesh: DeviceMesh, tp_mesh: DeviceMesh | None = None
) -> None:
    """Split the experts of every MoE block of ``model`` over the 1-D ep ``mesh`` (in place);
    with ``tp_mesh`` (the (ep, tp) mesh) their FFN width over tp as well."""
    for block in model.blocks:
        if not block.is_moe:
            continue
        experts = block.mlp.experts
        d = ExpertDispatch(mesh, block.mlp.experts_n)
        if tp_mesh is None:
            distribute_module(experts, mesh, d.partition, d.dispatch, d.combine)
            continue
        shard_parameters(experts, tp_mesh, lambda name: [Shard(0), Shard(EXPERT_WIDTH_DIM[name])])
        t = ExpertTensorGather(tp_mesh["tp"])
        distribute_module(experts, mesh, None, d.dispatch, d.combine)
        experts.register_forward_pre_hook(t.gather)  # after the ep dispatch
        experts.register_forward_hook(t.scatter, prepend=True)  # before the ep combine
