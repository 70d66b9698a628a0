"""The training loop: composes runtime, model, parallelism, data, checkpoints and metrics.

``train(config, on_event)`` runs in every process of a job (one process, or each rank under
torchrun). It never prints: rank 0 reports progress through ``on_event`` (``RunStarted``,
``Notice``, ``StepDone``, ``CheckpointSaved``) and the CLI renders it.

Exact resumption: the data order is a pure function of (seed, epoch, cursor); the model,
AdamW moments, LR schedule, RNG states and loader position are all in the checkpoint; so a
run killed at any point and restarted repeats, bit for bit, the steps an uninterrupted run
takes (on the same hardware and thread count).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from gigafactory.plan.flops import training_flops_per_token
from gigafactory.plan.params import total_params
from gigafactory.spec.catalog import load_model
from gigafactory.spec.layout import LayoutSpec
from gigafactory.spec.model import ModelSpec
from gigafactory.train import metrics as m
from gigafactory.train.checkpoint import Checkpointer
from gigafactory.train.data import Corpus, TokenLoader, load_prepared, prepare
from gigafactory.train.errors import NonFiniteError, TrainConfigError
from gigafactory.train.export import export_model
from gigafactory.train.fit import check_fits
from gigafactory.train.model import Transformer
from gigafactory.train.parallelize import (
    ParallelDims,
    Parallelized,
    Runtime,
    autocast,
    clip_grad_norm,
    init_runtime,
    mean_over_data_parallel,
    parallelize,
    planned_state_bytes,
    resolve_precision,
    shutdown,
    sum_partial_gradients,
)
from gigafactory.train.tokenizer import load_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. ``batch`` is the global batch in sequences (all ranks)."""

    model: str = "grok-mini"  # a catalog preset or a YAML path
    out: Path | None = None  # None = runs/<model name>
    steps: int = 200
    batch: int = 16
    micro_batch: int = 0  # sequences per rank per forward; 0 = batch / dp
    seq: int = 0  # 0 = the model's seq_len
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int = -1  # -1 = 5% of steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    seed: int = 0
    data: Path | None = None  # None = the generated corpus of social posts
    posts: int = 20_000
    text_field: str = "text"
    ckpt_every: int = 100
    keep: int = 3
    dp: int = 0  # 0 = world / (tp·pp)
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    ep: int = 1
    layout_from_plan: Path | None = None  # `gigafactory plan --json` output: its layout
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    tensorboard: bool = True
    export: bool = True
    restart: bool = False  # every checkpoint corrupt: delete them and start from step 0

    def check(self) -> None:
        for name in ("steps", "batch", "ckpt_every", "keep", "posts"):
            if getattr(self, name) < 1:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("micro_batch", "seq", "dp"):
            if getattr(self, name) < 0:
                raise TrainConfigError(
                    f"--{name.replace('_', '-')} must be >= 0 (0 = the default), got "
                    f"{getattr(self, name)}"
                )
        for name in ("lr", "weight_decay", "grad_clip", "min_lr_ratio"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (name == "lr" and value == 0):
                raise TrainConfigError(
                    f"--{name.replace('_', '-')} must be a finite number "
                    f"{'> 0' if name == 'lr' else '>= 0'}, got {value}"
                )
        if self.warmup < -1:
            raise TrainConfigError(
                f"--warmup must be >= 0 steps, or -1 for 5% of --steps; got {self.warmup}"
            )
        if self.warmup >= self.steps:
            raise TrainConfigError(f"--warmup {self.warmup} must be below --steps {self.steps}")
        if self.layout_from_plan is not None:
            given = [
                f"--{name} {getattr(self, name)}"
                for name, default in (("tp", 1), ("pp", 1), ("vpp", 1), ("ep", 1), ("dp", 0))
                if getattr(self, name) != default
            ]
            if given:
                raise TrainConfigError(
                    f"--layout-from-plan takes the layout from the plan; drop {' '.join(given)} "
                    "(or drop --layout-from-plan)"
                )
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise TrainConfigError(f"--out {self.out} is a file; give a folder for the run")


# --- events the loop reports (rank 0 only) -------------------------------------------------


@dataclass(frozen=True)
class RunStarted:
    model: str
    params: int
    device: str
    precision: str
    world_size: int
    grad_accum: int
    start_step: int
    steps: int
    tokens_per_step: int
    corpus: str
    data_tokens: int
    data_reused: bool
    resumed_from: Path | None
    layout: str = ""


@dataclass(frozen=True)
class Notice:
    message: str
    warning: bool = False


@dataclass(frozen=True)
class StepDone:
    metrics: m.StepMetrics


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path


Event = RunStarted | Notice | StepDone | CheckpointSaved


@dataclass
class TrainResult:
    out: Path
    start_step: int
    steps: int
    params: int
    history: list[m.StepMetrics] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    resumed_from: Path | None = None
    export_dir: Path | None = None
    metrics_path: Path | None = None


# --- components ----------------------------------------------------------------------------


class WarmupCosine:
    """LR factor after ``step`` optimizer steps: linear warmup (Goyal et al. 2017), then cosine
    decay to ``min_ratio`` (Loshchilov & Hutter 2017). A class, not a lambda, so LambdaLR can
    put it in the checkpoint."""

    def __init__(self, warmup: int, total: int, min_ratio: float):
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(
    spec: ModelSpec,
    runtime: Runtime,
    dims: ParallelDims,
    precision: str,
    compile: bool,
    seed: int,
) -> Parallelized:
    """The model built on the meta device (no memory), the layout applied (TP, EP, PP,
    compile, FSDP2), then each rank allocates and initialises only its shards, with the values
    a one-process run starting from ``seed`` has."""
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = Transformer(spec)
    return parallelize(model, runtime, dims, precision, compile)


def load_plan_layout(path: Path) -> LayoutSpec:
    """The layout of a plan written by ``gigafactory plan --json``."""
    try:
        data = json.loads(Path(path).read_text())
        layout = data["plan"]["layout"]
    except OSError as exc:
        raise TrainConfigError(f"--layout-from-plan {path}: cannot read it ({exc})") from exc
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise TrainConfigError(
            f"--layout-from-plan {path}: not the JSON of `gigafactory plan --json` "
            f"(no plan.layout: {exc})"
        ) from exc
    return LayoutSpec.from_dict(layout)


def layout_dims(cfg: TrainConfig, world_size: int) -> ParallelDims:
    """The run's layout: the plan's (``--layout-from-plan``) or the flags'."""
    if cfg.layout_from_plan is not None:
        return ParallelDims.from_layout(load_plan_layout(cfg.layout_from_plan), world_size)
    return ParallelDims.build(
        world_size, cfg.batch, cfg.micro_batch, cfg.dp, cfg.tp, cfg.pp, cfg.vpp, cfg.ep
    )


def describe_layout(dims: ParallelDims) -> str:
    """``tp=2 pp=1 ep=1 dp=2`` (and vpp when interleaved), as the planner names layouts."""
    vpp = f" vpp={dims.vpp}" if dims.vpp > 1 else ""
    return f"tp={dims.tp} pp={dims.pp}{vpp} ep={dims.ep} dp={dims.dp}"


def build_optimizer(
    par: Parallelized, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on matrices only (not norms or biases), as nanoGPT does."""
    params = [p for p in par.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    fused = params[0].device.type == "cuda"
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
    warmup = cfg.warmup if cfg.warmup >= 0 else cfg.steps // 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(warmup, cfg.steps, cfg.min_lr_ratio)
    )
    return opt, sched


def train_step(
    par: Parallelized,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    precision: str,
    grad_clip: float,
    on_grads: Callable[[], None] | None = None,
) -> tuple[float, float, float]:
    """Forward/backward over the micro-batches (or the pipeline schedule over them), clip,
    step. Returns (loss, aux, grad norm), losses averaged over micro-batches and dp ranks.
    ``on_grads`` is called while the gradients exist (before the optimizer frees them)."""
    if par.schedule is not None:
        sums = _pipeline_step(par, micro_batches, runtime)
    else:
        sums = _accumulate(par.parts[0], micro_batches, runtime, precision)
    sum_partial_gradients(par)
    norm = clip_grad_norm(par, grad_clip)
    if on_grads is not None:
        on_grads()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    loss, aux = mean_over_data_parallel(sums, par).tolist()
    return loss, aux, norm


def _accumulate(
    model: nn.Module,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    runtime: Runtime,
    precision: str,
) -> torch.Tensor:
    """Gradient accumulation; (loss, aux) averaged over the micro-batches."""
    accum = len(micro_batches)
    sums = torch.zeros(2, device=runtime.device)
    for i, (x, y) in enumerate(micro_batches):
        if runtime.distributed:
            model.set_requires_gradient_sync(i == accum - 1)  # type: ignore[operator]
        with autocast(runtime, precision):
            out = model(x, y)
        ((out.loss + out.aux_loss) / accum).backward()
        sums += torch.stack([out.loss.detach(), out.aux_loss.detach()]).float() / accum
    return sums


def _pipeline_step(
    par: Parallelized, micro_batches: list[tuple[torch.Tensor, torch.Tensor]], runtime: Runtime
) -> torch.Tensor:
    """One pass of the pipeline schedule over this step's micro-batches: the last stage
    reports their mean loss, each stage the mean aux loss of its blocks (summed over the
    stages by ``mean_over_data_parallel``)."""
    x = torch.cat([mb[0] for mb in micro_batches])
    y = torch.cat([mb[1] for mb in micro_batches])
    losses: list[torch.Tensor] = []
    inputs = (x,) if par.first_stage else ()
    target = y if par.last_stage else None
    for stage in par.parts:
        stage.aux_losses.clear()  # type: ignore[union-attr]
    par.schedule.step(*inputs, target=target, losses=losses)
    sums = torch.zeros(2, device=runtime.device)
    if par.last_stage:
        sums[0] = torch.stack([loss.detach() for loss in losses]).float().mean()
    n = len(micro_batches)
    for stage in par.parts:
        # the schedule's first step also runs each stage once to infer shapes: the last n count
        aux = stage.aux_losses[-n:]  # type: ignore[index]
        if aux:
            sums[1] += torch.stack(aux).float().mean()
    return sums


def check_finite(step: int, loss: float, grad_norm: float, resumed_from: Path | None) -> None:
    """Stop before a non-finite loss or gradient reaches a checkpoint. Every rank sees the same
    averaged loss and global norm, so every rank stops at the same step."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    start = f"resume from {resumed_from}" if resumed_from else "start again"
    raise NonFiniteError(
        f"step {step}: loss {loss} and gradient norm {grad_norm} are not both finite, so "
        f"training stopped before any checkpoint of them was written; lower --lr, check the "
        f"data, then {start}"
    )


def rng_state(runtime: Runtime) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if runtime.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def set_rng_state(state: dict[str, Any], runtime: Runtime) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and runtime.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def _keep_configured_schedule(
    scheduler: torch.optim.lr_scheduler.LambdaLR, cfg: TrainConfig, emit: Callable[[Event], None]
) -> None:
    """A resumed run follows this run's --steps: a longer run decays over the new length."""
    restored: WarmupCosine = scheduler.lr_lambdas[0]  # type: ignore[assignment]
    if restored.total != cfg.steps:
        emit(Notice(f"LR schedule now decays over {cfg.steps} steps (was {restored.total})"))
        restored.total = cfg.steps


def _saved_keys(path: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(path)).read_metadata().state_dict_metadata)


# --- the loop ------------------------------------------------------------------------------


def train(cfg: TrainConfig, on_event: Callable[[Event], None] | None = None) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring."""
    cfg.check()
    spec = load_model(cfg.model)
    runtime = init_runtime(cfg.device)
    try:
        return _train(cfg, spec, runtime, on_event or (lambda _e: None))
    finally:
        shutdown(runtime)


def _train(
    cfg: TrainConfig, spec: ModelSpec, runtime: Runtime, on_event: Callable[[Event], None]
) -> TrainResult:
    main = runtime.is_main

    def emit(event: Event) -> None:
        if main:
            on_event(event)

    seq = cfg.seq or spec.seq_len
    dims = layout_dims(cfg, runtime.world_size)
    dims.validate(spec, seq)
    precision = resolve_precision(cfg.precision, runtime.device)
    check_fits(spec, dims.layout().replace(precision=precision), seq, runtime.device)
    if runtime.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 tensor cores for fp32 matmuls
    out = cfg.out or Path("runs") / spec.name

    # data: rank 0 trains the tokenizer and writes the shards once; the others read them
    corpus = Corpus(cfg.data, cfg.posts, cfg.seed, cfg.text_field)
    error: list[Any] = [None]
    if main:
        try:
            prepared = prepare(corpus, out, spec.vocab)
        except Exception as exc:  # tell the other ranks before raising
            error = [exc]
    if runtime.distributed:
        dist.broadcast_object_list(error, src=0)
    if error[0] is not None:
        raise error[0]
    if not main:
        prepared = load_prepared(out)
    par = build_model(spec, runtime, dims, precision, cfg.compile, cfg.seed)
    model = par.state_module  # this rank's parameters, named as in the whole model
    loader = TokenLoader(
        prepared, seq, dims.global_batch, dims.micro_batch, dims.dp, par.dp_rank, cfg.seed,
        runtime.device,
    )  # fmt: skip
    optimizer, scheduler = build_optimizer(par, cfg)
    identity = {"model": spec.to_dict(), "data": prepared.fingerprint, "corpus": corpus.describe()}
    ckpt = Checkpointer(out / "checkpoints", runtime, identity, cfg.keep, cfg.restart)
    params = total_params(spec)  # the whole model's, however it is split

    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    loader_key, rng_key = f"loader.dp_rank_{runtime.rank}", f"rng.rank_{runtime.rank}"

    def state() -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        return {
            "model": model_sd,
            "optim": optim_sd,
            "sched": scheduler.state_dict(),
            "train": {"step": 0},
            loader_key: loader.state_dict(),
            rng_key: rng_state(runtime),
        }

    # resume from the newest verified checkpoint
    start, warnings = 0, []
    path, warnings = ckpt.latest()
    for w in warnings:
        emit(Notice(w, warning=True))
    if path is not None:
        current = state()
        saved = _saved_keys(path)
        if not any(k.startswith(loader_key) for k in saved):  # another world size
            current.pop(rng_key)
            loader_key = "loader.dp_rank_0"
            current[loader_key] = current.pop(f"loader.dp_rank_{runtime.rank}")
            emit(Notice(f"{path} was written by another number of ranks: RNG not restored"))
        ckpt.load(path, current)
        set_state_dict(
            model,
            optimizer,
            model_state_dict=current["model"],
            optim_state_dict=current["optim"],
        )
        scheduler.load_state_dict(current["sched"])
        _keep_configured_schedule(scheduler, cfg, emit)
        loader.load_state_dict(current[loader_key])
        if rng_key in current:
            set_rng_state(current[rng_key], runtime)
        start = int(current["train"]["step"])
        loader_key = f"loader.dp_rank_{runtime.rank}"
        if start > cfg.steps:
            raise TrainConfigError(
                f"{path} is at step {start}, beyond --steps {cfg.steps}; pass --steps above "
                f"{start} to train on, or give a new --out to start again"
            )

    hw, hw_warning = m.device_hardware(runtime.device)
    if hw_warning:
        warnings.append(hw_warning)
        emit(Notice(hw_warning, warning=True))
    peak = hw.peak(m.catalog_precision(precision)) * 1e12 if hw else None
    flops_per_token = training_flops_per_token(spec, seq)
    tokens_per_step = dims.global_batch * seq
    emit(
        RunStarted(
            spec.name, params, m.device_name(runtime.device), precision, runtime.world_size,
            dims.grad_accum, start, cfg.steps, tokens_per_step, corpus.describe(),
            prepared.tokens, prepared.reused, path, describe_layout(dims),
        )
    )  # fmt: skip

    log = m.MetricsLog(out, cfg.tensorboard, resume_step=start) if main else None
    result = TrainResult(out, start, cfg.steps, params, warnings=warnings, resumed_from=path)
    last_saved = path
    try:
        for part in par.parts:
            part.train()
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            lr = scheduler.get_last_lr()[0]
            held: list[tuple[int, int]] = []  # measured in this run's first step
            on_grads = partial(_append_held_bytes, held, par) if step == start + 1 else None
            loss, aux, norm = train_step(
                par, optimizer, scheduler, loader.next_batch(), runtime, precision,
                cfg.grad_clip, on_grads,
            )  # fmt: skip
            check_finite(step, loss, norm, last_saved)
            if held:
                _report_memory(held[0], spec, dims, par, runtime, out, emit)
            if runtime.device.type == "cuda":
                torch.cuda.synchronize(runtime.device)
            dt = time.perf_counter() - t0
            tps = m.tokens_per_second(tokens_per_step, dt)
            mfu = (
                m.model_flops_utilization(flops_per_token, tps, runtime.world_size, peak)
                if peak
                else None
            )
            metrics = m.StepMetrics(
                step, loss, aux, lr, norm, dt, tokens_per_step, tps, mfu,
                m.memory_gb(runtime.device),
            )  # fmt: skip
            result.history.append(metrics)
            if log is not None:
                log.log(metrics)
            emit(StepDone(metrics))
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                st = state()
                st["train"]["step"] = step
                saved_at = last_saved = ckpt.save(step, st)
                emit(CheckpointSaved(step, saved_at))
        if cfg.export:
            result.export_dir = _export(par, spec, prepared.tokenizer_path, out, runtime, cfg.steps)
            if result.export_dir is not None:
                emit(Notice(f"exported the model to {result.export_dir}"))
    finally:
        if log is not None:
            log.close()
            result.metrics_path = log.path
    return result


def _append_held_bytes(held: list[tuple[int, int]], par: Parallelized) -> None:
    held.append(m.held_bytes(par.parameters()))


def _report_memory(
    held: tuple[int, int],
    spec: ModelSpec,
    dims: ParallelDims,
    par: Parallelized,
    runtime: Runtime,
    out: Path,
    emit: Callable[[Event], None],
) -> None:
    """Every rank's parameter and gradient bytes next to the planner's, in ``layout.json``
    (first pipeline stage: the one the planner models)."""
    pp_rank = par.mesh["pp"].get_local_rank() if par.mesh is not None else 0
    row = {"rank": runtime.rank, "pp_rank": pp_rank, "param_bytes": held[0], "grad_bytes": held[1]}
    rows: list[Any] = [row]
    if runtime.distributed:
        rows = [None] * runtime.world_size
        dist.all_gather_object(rows, row)
    if not runtime.is_main:
        return
    planned = planned_state_bytes(spec, dims)
    report = {
        "layout": describe_layout(dims),
        "planned": {"param_bytes": planned[0], "grad_bytes": planned[1]},
        "ranks": rows,
    }
    (out / "layout.json").write_text(json.dumps(report, indent=1))
    first = [r for r in rows if r["pp_rank"] == 0]
    emit(
        Notice(
            f"memory per rank: parameters {max(r['param_bytes'] for r in first) / 1e6:.3f} MB, "
            f"gradients {max(r['grad_bytes'] for r in first) / 1e6:.3f} MB (the planner: "
            f"{planned[0] / 1e6:.3f} MB and {planned[1] / 1e6:.3f} MB)"
        )
    )


def _export(
    par: Parallelized,
    spec: ModelSpec,
    tokenizer_path: Path,
    out: Path,
    runtime: Runtime,
    step: int,
) -> Path | None:
    """Gather the full weights (a collective under FSDP2 and TP) and write them on rank 0;
    with pipeline stages, rank 0 collects the other stages' weights too."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    pp = par.group("pp")
    # cpu_offload keeps the gathered weights on global rank 0 only: each stage needs its own
    options = StateDictOptions(full_state_dict=True, cpu_offload=pp is None)
    full: dict[str, Any] = {}
    for part in par.parts:
        full.update(get_model_state_dict(part, options=options))
    full = {k: v.cpu() for k, v in full.items()}
    tp_rank = par.mesh["tp"].get_local_rank() if par.mesh is not None else 0
    if pp is not None and par.dp_rank == 0 and tp_rank == 0:
        stages: list[Any] = [None] * par.dims.pp
        dist.gather_object(full, stages if runtime.is_main else None, dst=0, group=pp)
        if runtime.is_main:
            full = {k: v for stage in stages for k, v in stage.items()}
    if not runtime.is_main:
        return None
    return export_model(full, spec, load_tokenizer(tokenizer_path), out / "model", step)
