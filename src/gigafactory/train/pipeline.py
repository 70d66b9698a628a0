"""Pipeline parallelism with ``torch.distributed.pipelining`` (PyTorch's own schedules).

The L blocks are cut into pp·vpp stages of L/(pp·vpp) consecutive blocks. Pipeline rank r
holds stage r (1F1B, PipeDream-Flush: Narayanan et al. 2021) or, interleaved, stages r, r+pp,
… (vpp chunks per rank: Narayanan et al. 2021 Sec. 2.2). The first stage also embeds the
tokens, the last applies the final norm and the output head; each stage is a ``Stage`` whose
parameter names are the full model's (``blocks.5.attn.q.weight`` stays that), so a checkpoint
written under one pipeline layout loads under any other. A step's micro-batches are the
schedule's micro-batches; the schedule averages their losses as gradient accumulation does.

Tied embeddings (Megatron-LM's way): the last stage holds its own copy of the embedding,
``tok_emb.weight`` like the first stage's, used as the output head. Both start equal (the
initialisation is a function of the parameter's name) and stay equal: after backward their
gradients are summed over the first and last pipeline ranks (``parallelize.py``), so both
copies take the same optimizer step. Checkpoints hold one ``tok_emb.weight`` (DCP writes a
tensor saved by several ranks once).

MoE blocks: the load-balancing loss of a stage's blocks does not reach the schedule's loss, so
it enters backward where it arises: ``_AuxLossInBackward`` (Megatron-Core's
``MoEAuxLossAutoScaler``) passes the activations through and gives the aux loss gradient 1 in
backward, as if added to the micro-batch's loss; the schedule then divides every gradient by
the number of micro-batches, as it does the cross-entropy's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh

from gigafactory.train.model import Transformer


class _AuxLossInBackward(torch.autograd.Function):
    """Identity on the activations; in backward, gradient 1 for the aux loss ``aux`` (so it
    is optimised as part of the loss the schedule backpropagates)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_shape, ctx.aux_dtype = aux.shape, aux.dtype
        return x.clone()  # not a view (FSDP2 warns of views); x itself is then freed

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return grad, torch.ones(ctx.aux_shape, dtype=ctx.aux_dtype, device=grad.device)


class Stage(nn.Module):
    """Consecutive blocks of a ``Transformer`` (+ embedding if first, + norm and head if last;
    with tied embeddings the last stage holds the embedding too, as its output head)."""

    def __init__(self, model: Transformer, layers: range, first: bool, last: bool):
        super().__init__()
        self.multiplier = model.spec.embedding_multiplier
        self.aux_coef = model.spec.router_aux_loss_coef
        self.embeds = first
        tied = model.lm_head is None
        self.tok_emb = model.tok_emb if first or (last and tied) else None
        self.pos_emb = model.pos_emb if first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.head = model.head if last else None
        self.moe = any(model.blocks[i].is_moe for i in layers)
        self.aux_losses: list[torch.Tensor] = []  # this stage's aux loss, one per forward
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.embeds:  # x: token ids (B, T)
            assert self.tok_emb is not None
            T = x.size(1)
            x = self.tok_emb(x) * self.multiplier  # (B, T, C)
            if self.pos_emb is not None:
                x = x + self.pos_emb(torch.arange(T, device=x.device))
        aux = torch.zeros((), device=x.device)
        for block in self.blocks.values():
            x, block_aux = block(x, self.rope_cos, self.rope_sin)
            aux = aux + block_aux
        if self.moe:
            aux = aux * self.aux_coef
            x = _AuxLossInBackward.apply(x, aux)
            self.aux_losses.append(aux.detach())
        if self.head is not None:
            assert self.norm is not None
            weight = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight  # type: ignore[union-attr]
            x = self.head(self.norm(x), weight)  # (B, T, V)
        return x


def stage_ids(pp_rank: int, pp: int, vpp: int) -> list[int]:
    """Stages of pipeline rank ``pp_rank``: r, r+pp, … (the interleaved loop order)."""
    return [pp_rank + k * pp for k in range(vpp)]


def build_stages(model: Transformer, pp_rank: int, pp: int, vpp: int) -> list[Stage]:
    """This rank's stages of ``model`` (their modules are the model's own, not copies)."""
    n = pp * vpp
    per = len(model.blocks) // n
    return [
        Stage(model, range(s * per, (s + 1) * per), first=s == 0, last=s == n - 1)
        for s in stage_ids(pp_rank, pp, vpp)
    ]


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of one micro-batch, in fp32 (as ``Transformer.forward``)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def build_schedule(
    stages: list[nn.Module], stage_list: list[int], n: int, microbatches: int, mesh: DeviceMesh
):
    """1F1B for one stage per rank, interleaved 1F1B for several (PyTorch's schedules)."""
    from torch.distributed.pipelining import (
        PipelineStage,
        Schedule1F1B,
        ScheduleInterleaved1F1B,
    )

    device = next(stages[0].parameters()).device
    pipe = [
        PipelineStage(stage, idx, n, device, group=mesh.get_group())
        for stage, idx in zip(stages, stage_list, strict=True)
    ]
    if len(pipe) == 1:
        return Schedule1F1B(pipe[0], microbatches, loss_fn=next_token_loss)
    return ScheduleInterleaved1F1B(pipe, microbatches, loss_fn=next_token_loss)


class Stages(nn.Module):
    """Several stages of one rank (interleaved) seen as one module with the full model's
    parameter names, for DCP's state dicts (which take one module)."""

    def __init__(self, stages: list[Stage]):
        super().__init__()
        self.blocks = nn.ModuleDict({k: b for s in stages for k, b in s.blocks.items()})
        for name in ("tok_emb", "pos_emb", "norm", "lm_head"):
            held = [getattr(s, name) for s in stages if getattr(s, name) is not None]
            setattr(self, name, held[0] if held else None)
