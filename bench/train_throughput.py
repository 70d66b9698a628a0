"""Benchmark: training throughput (tokens/s, MFU) of a preset on this device, next to the
planner's predicted step time for the same spec, layout and device.

It runs the trainer's own components (``build_model`` → FSDP2/compile, AdamW, ``train_step``)
on random token ids (throughput does not depend on the text), times ``--steps`` steps after
``--warmup`` untimed ones (compilation happens there), and asks ``plan.step.estimate_step``
for the same model, layout and catalog accelerator. On a CPU there is no catalog peak: the
measured numbers are printed and the prediction is marked as needing a catalog device.

    .venv/bin/python bench/train_throughput.py --model grok-mini --batch 8 --seq 256
    python bench/train_throughput.py --model grok-1b-dense --batch 8 --seq 2048 --compile
    torchrun --nproc_per_node 8 bench/train_throughput.py --model grok-1b-moe --compile
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from gigafactory.errors import GigafactoryError
from gigafactory.plan.flops import training_flops_per_token
from gigafactory.spec import LayoutSpec, load_model
from gigafactory.train import metrics as m
from gigafactory.train.loop import TrainConfig, build_model, build_optimizer, train_step
from gigafactory.train.parallelize import (
    ParallelDims,
    init_runtime,
    resolve_precision,
    shutdown,
)


def predicted_step_s(model, dims: ParallelDims, hw, seq: int, precision: str) -> tuple[float, str]:
    """The planner's step time for this run's layout on catalog hardware ``hw``."""
    from gigafactory.plan.step import estimate_step

    layout = LayoutSpec(
        dp=dims.dp,
        sharding="fsdp" if dims.dp > 1 else "none",
        micro_batch=dims.micro_batch,
        global_batch=dims.global_batch,
        precision=precision,
    )
    try:
        est = estimate_step(model, layout, hw, seq_len=seq)
    except GigafactoryError as exc:
        return float("nan"), f"planner refused: {exc}"
    return est.step_s, f"planner MFU {est.mfu:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="grok-mini")
    ap.add_argument("--batch", type=int, default=8, help="global batch (sequences)")
    ap.add_argument("--micro-batch", type=int, default=0)
    ap.add_argument("--seq", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spec = load_model(args.model)
    seq = args.seq or spec.seq_len
    runtime = init_runtime(args.device)
    try:
        dims = ParallelDims.build(runtime.world_size, args.batch, args.micro_batch)
        dims.validate(spec, seq)
        precision = resolve_precision(args.precision, runtime.device)
        if runtime.device.type == "cuda":
            torch.set_float32_matmul_precision("high")
        par = build_model(spec, runtime, dims, precision, args.compile, seed=0)
        cfg = TrainConfig(model=args.model, steps=args.warmup + args.steps, batch=args.batch)
        optimizer, scheduler = build_optimizer(par, cfg)
        gen = torch.Generator(device=runtime.device).manual_seed(runtime.rank)

        def batch() -> list[tuple[torch.Tensor, torch.Tensor]]:
            rows = torch.randint(
                0, spec.vocab, (dims.micro_batch, seq + 1), device=runtime.device, generator=gen
            )
            return [(rows[:, :-1], rows[:, 1:])] * dims.grad_accum

        def sync() -> None:
            if runtime.device.type == "cuda":
                torch.cuda.synchronize(runtime.device)

        for _ in range(args.warmup):
            train_step(par, optimizer, scheduler, batch(), runtime, precision, 1.0)
        sync()
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(runtime.device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss, _, _ = train_step(par, optimizer, scheduler, batch(), runtime, precision, 1.0)
        sync()
        step_s = (time.perf_counter() - t0) / args.steps

        tokens = dims.global_batch * seq
        tps = m.tokens_per_second(tokens, step_s)
        hw, warning = m.device_hardware(runtime.device)
        flops = training_flops_per_token(spec, seq)
        row = {
            "model": spec.name,
            "device": m.device_name(runtime.device),
            "ranks": runtime.world_size,
            "precision": precision,
            "compile": args.compile,
            "global_batch": dims.global_batch,
            "seq": seq,
            "tokens_per_step": tokens,
            "step_s": step_s,
            "tokens_per_s": tps,
            "tokens_per_s_per_device": tps / runtime.world_size,
            "model_tflops_per_device": tps * flops / runtime.world_size / 1e12,
            "mfu": None,
            "predicted_step_s": None,
            "prediction": "needs a catalog device (the CPU has no catalog peak)",
            "memory_gb": m.memory_gb(runtime.device),
            "final_loss": loss,
        }
        if hw is not None:
            peak = hw.peak(m.catalog_precision(precision)) * 1e12
            row["mfu"] = m.model_flops_utilization(flops, tps, runtime.world_size, peak)
            row["predicted_step_s"], row["prediction"] = predicted_step_s(
                spec, dims, hw, seq, precision
            )
            row["catalog_device"] = hw.name
        else:
            row["warning"] = warning
    finally:
        shutdown(runtime)
    if not runtime.is_main:
        return
    if args.json:
        print(json.dumps(row))
        return
    table = Table(title=f"training throughput: {spec.name} on {row['device']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    pred = row["predicted_step_s"]
    for key, value in (
        ("ranks × precision", f"{runtime.world_size} × {precision}, compile {args.compile}"),
        ("tokens / step", f"{tokens:,} ({dims.global_batch} × {seq})"),
        ("step time (measured)", f"{step_s * 1e3:,.1f} ms"),
        ("step time (planner)", f"{pred * 1e3:,.1f} ms" if pred else "-"),
        ("planner note", row["prediction"]),
        ("tokens/s", f"{tps:,.0f}"),
        ("model TFLOP/s per device", f"{row['model_tflops_per_device']:,.2f}"),
        ("MFU", f"{row['mfu']:.1%}" if row["mfu"] is not None else "n/a (no catalog peak)"),
        ("peak memory", f"{row['memory_gb']:.2f} GB"),
    ):
        table.add_row(key, value)
    console = Console()
    console.print(table)
    if hw is None:
        console.print(f"[yellow]{warning}[/]", highlight=False)


if __name__ == "__main__":
    main()
