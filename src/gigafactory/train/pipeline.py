"""Pipeline parallelism with ``torch.distributed.pipelining`` (PyTorch's own schedules).

The L blocks are cut into pp·vpp stages of L/(pp·vpp) consecutive blocks. Pipeline rank r
holds stage r (1F1B, PipeDream-Flush: Narayanan et al. 2021) or, interleaved, stages r, r+pp,
… (vpp chunks per rank: Narayanan et al. 2021 Sec. 2.2). The first stage also embeds the
tokens, the last applies the final norm and the output head; each stage is a ``Stage`` whose
parameter names are the full model's (``blocks.5.attn.q.weight`` stays that), so a checkpoint
written under one pipeline layout loads under any other. A step's micro-batches are the
schedule's micro-batches; the schedule averages their losses as gradient accumulation does.

Limits (refused in ``ParallelDims.validate``): tied embeddings (the weight would live on two
stages) and MoE blocks (their load-balancing loss is not part of a stage's output).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.device_mesh import DeviceMesh

from gigafactory.train.model import Transformer


class Stage(nn.Module):
    """Consecutive blocks of a ``Transformer`` (+ embedding if first, + norm and head if last)."""

    def __init__(self, model: Transformer, layers: range, first: bool, last: bool):
        super().__init__()
        self.multiplier = model.spec.embedding_multiplier
        self.tok_emb = model.tok_emb if first else None
        self.pos_emb = model.pos_emb if first else None
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in layers})
        self.norm = model.norm if last else None
        self.lm_head = model.lm_head if last else None
        self.head = model.head if last else None
        self.register_buffer("rope_cos", model.rope_cos, persistent=False)
        self.register_buffer("rope_sin", model.rope_sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tok_emb is not None:  # x: token ids (B, T)
            T = x.size(1)
            x = self.tok_emb(x) * self.multiplier  # (B, T, C)
            if self.pos_emb is not None:
                x = x + self.pos_emb(torch.arange(T, device=x.device))
        for block in self.blocks.values():
            x, _ = block(x, self.rope_cos, self.rope_sin)
        if self.head is not None:
            assert self.norm is not None and self.lm_head is not None
            x = self.head(self.norm(x), self.lm_head.weight)  # (B, T, V)
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
