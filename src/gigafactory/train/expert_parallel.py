"""Expert parallelism (GShard, Lepikhin et al. 2020; Megatron-Core's token dispatcher), applied
outside the model file to the ``Experts`` of each MoE block.

The E experts are split over the ``ep`` ranks of an expert-parallel group (E/ep each, a
``Shard(0)`` DTensor, so checkpoints reshard). The router is unchanged and runs on each rank's
own tokens; the ``Experts`` module receives them grouped by expert with ``counts`` (E,). Its
input is dispatched with one all-to-all (each rank sends every expert's rows to the rank that
holds it), regrouped by local expert for the grouped GEMMs, and the outputs go back with the
reverse all-to-all into the original order. The split sizes of an all-to-all are host
integers: the counts are exchanged first (one small all-to-all) and read once per layer.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_module, distribute_tensor


class ExpertDispatch:
    """The all-to-all dispatch and combine around one ``Experts`` module."""

    def __init__(self, mesh: DeviceMesh, experts: int):
        self.mesh, self.ep = mesh, mesh.size()
        self.local = experts // self.ep  # experts per rank
        self.group = mesh.get_group()
        self._state: tuple[torch.Tensor, list[int], list[int]] | None = None

    def partition(self, name: str, module: nn.Module, mesh: DeviceMesh) -> None:
        if name:
            return
        for pname, param in list(module.named_parameters(recurse=False)):
            module.register_parameter(
                pname, nn.Parameter(distribute_tensor(param, mesh, [Shard(0)], src_data_rank=None))
            )

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
        expert = torch.arange(self.local, device=x.device).repeat(self.ep)  # (ep·E/ep,)
        expert_of_row = expert.repeat_interleave(received.flatten(), output_size=rows.size(0))
        order = expert_of_row.argsort(stable=True)  # rows regrouped by local expert
        self._state = (order, send, recv)
        return rows[order], received.sum(0)

    def combine(self, module: nn.Module, y: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
        """The experts' outputs back to the ranks and the order their rows came from."""
        assert self._state is not None
        order, send, recv = self._state
        self._state = None
        back = order.argsort()  # the inverse permutation
        return funcol.all_to_all_single_autograd(y[back], send, recv, self.group)


def apply_expert_parallel(model: nn.Module, mesh: DeviceMesh) -> None:
    """Split the experts of every MoE block of ``model`` over the 1-D ``mesh`` (in place)."""
    for block in model.blocks:
        if block.is_moe:
            d = ExpertDispatch(mesh, block.mlp.experts_n)
            distribute_module(block.mlp.experts, mesh, d.partition, d.dispatch, d.combine)
