"""CLI verbs of the train part: ``train``, ``generate`` and ``export``.

``gigafactory train`` runs in one process, or in every rank under
``torchrun --nproc_per_node N $(which gigafactory) train ...``; only rank 0 renders.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _fmt_tokens(n: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


class TrainView:
    """Renders the loop's events on rank 0: notices, a progress bar, a closing table."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.task: int | None = None

    def __call__(self, event: object) -> None:
        from gigafactory.train import loop

        if isinstance(event, loop.RunStarted):
            resumed = f", resumed from {event.resumed_from}" if event.resumed_from else ""
            self.console.print(
                f"[bold]{event.model}[/]: {event.params / 1e6:,.2f}M params on "
                f"{event.world_size} × {event.device} ({event.precision}, {event.layout}), "
                f"{event.tokens_per_step:,} tokens/step, grad accumulation {event.grad_accum}"
                f"{resumed}",
                highlight=False,
            )
            reuse = "prepared earlier" if event.data_reused else "prepared now"
            self.console.print(
                f"data: {event.corpus}, {_fmt_tokens(event.data_tokens)} tokens ({reuse})",
                highlight=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=event.steps, completed=event.start_step, stats=""
            )
        elif isinstance(event, loop.StepDone):
            s = event.metrics
            mfu = f" MFU {s.mfu:.1%}" if s.mfu is not None else ""
            stats = (
                f"loss {s.loss:.4f} "
                f"{_fmt_tokens(s.tokens_per_s)} tok/s{mfu} mem {s.memory_gb:.2f} GB"
            )
            if self.task is not None:
                self.progress.update(self.task, completed=s.step, stats=stats)
        elif isinstance(event, loop.CheckpointSaved):
            self.progress.console.print(f"[dim]checkpoint {event.path}[/]", highlight=False)
        elif isinstance(event, loop.Notice):
            style = "yellow" if event.warning else "dim"
            prefix = "warning: " if event.warning else ""
            self.progress.console.print(f"[{style}]{prefix}{event.message}[/]", highlight=False)

    def close(self) -> None:
        if self.task is not None:  # started by RunStarted; an early error never started it
            self.progress.stop()


def _summary(result: object, console: Console) -> None:
    from gigafactory.train.loop import TrainResult

    assert isinstance(result, TrainResult)
    table = Table(title=f"gigafactory train → {result.out}")
    for col in ("step", "loss", "aux", "tokens/s", "MFU", "step ms", "mem GB"):
        table.add_column(col, justify="right")
    history = result.history
    shown = history if len(history) <= 6 else [*history[:3], *history[-3:]]
    for s in shown:
        table.add_row(
            str(s.step),
            f"{s.loss:.4f}",
            f"{s.aux_loss:.4f}",
            f"{s.tokens_per_s:,.0f}",
            f"{s.mfu:.1%}" if s.mfu is not None else "n/a",
            f"{s.step_time_s * 1e3:.1f}",
            f"{s.memory_gb:.2f}",
        )
    console.print(table)
    if result.export_dir:
        console.print(f"model: {result.export_dir}", highlight=False)
    if result.metrics_path:
        tb = result.out / "tensorboard"
        board = f", TensorBoard: {tb}" if tb.is_dir() else ""
        console.print(f"logs: {result.metrics_path}{board}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add this part's verbs to ``app``."""

    @app.command("train")
    def train_cmd(
        model: str = typer.Option("grok-mini", help="Model preset, or a YAML file path."),
        steps: int = typer.Option(200, help="Optimizer steps to reach (a resumed run goes on)."),
        batch: int = typer.Option(16, help="Global batch in sequences, over all ranks."),
        micro_batch: int = typer.Option(
            0, help="Sequences per rank per forward; 0 = batch / ranks (no accumulation)."
        ),
        seq: int = typer.Option(0, help="Sequence length; 0 = the model's seq_len."),
        lr: float = typer.Option(3e-3, help="Peak learning rate (AdamW)."),
        warmup: int = typer.Option(-1, help="Warmup steps; -1 = 5% of --steps."),
        out: Path | None = typer.Option(
            None, help="Run folder, resumed if present; default runs/<model>."
        ),
        data: Path | None = typer.Option(
            None, help="Text/JSONL/Parquet file or folder; default: generated posts."
        ),
        text_field: str = typer.Option("text", help="JSONL field / Parquet column with text."),
        posts: int = typer.Option(20_000, help="Size of the generated corpus (no --data)."),
        seed: int = typer.Option(0, help="Seed of weights, data order and generated corpus."),
        ckpt_every: int = typer.Option(100, help="Checkpoint every N steps (and at the end)."),
        keep: int = typer.Option(3, help="Complete checkpoints to keep."),
        dp: int = typer.Option(0, help="Data-parallel degree; 0 = ranks / (tp·pp)."),
        tp: int = typer.Option(1, help="Tensor-parallel degree (with sequence parallelism)."),
        pp: int = typer.Option(1, help="Pipeline stages (1F1B; interleaved with --vpp)."),
        vpp: int = typer.Option(1, help="Pipeline chunks per rank (interleaved 1F1B)."),
        ep: int = typer.Option(1, help="Expert-parallel degree (inside the dp ranks)."),
        layout_from_plan: Path | None = typer.Option(
            None,
            help="Take tp/pp/vpp/ep/dp and the batch from `gigafactory plan --json` (then "
            "--tp/--pp/--vpp/--ep/--dp are refused).",
        ),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        precision: str = typer.Option("auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp32."),
        compile: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile."),
        tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard"),
        export: bool = typer.Option(True, "--export/--no-export", help="Write model/ at the end."),
        restart: bool = typer.Option(
            False,
            "--restart",
            help="When every checkpoint in --out fails verification, delete them and start "
            "from step 0 (without it such a run is refused).",
        ),
    ) -> None:
        """Train (or resume) a Grok-architecture model; runs under torchrun as well."""
        from gigafactory.train.loop import TrainConfig, train

        cfg = TrainConfig(
            model=model, out=out, steps=steps, batch=batch, micro_batch=micro_batch, seq=seq,
            lr=lr, warmup=warmup, seed=seed, data=data, posts=posts, text_field=text_field,
            ckpt_every=ckpt_every, keep=keep, dp=dp, tp=tp, pp=pp, vpp=vpp, ep=ep,
            layout_from_plan=layout_from_plan, device=device, precision=precision,
            compile=compile, tensorboard=tensorboard, export=export, restart=restart,
        )  # fmt: skip
        console = Console(stderr=False)
        if not _is_rank0():
            train(cfg)
            return
        view = TrainView(console)
        try:
            result = train(cfg, view)
        finally:
            view.close()
        _summary(result, console)

    @app.command("generate")
    def generate_cmd(
        prompt: str = typer.Argument(..., help="Text to continue."),
        checkpoint: Path = typer.Option(
            ..., help="Run folder (its --out), its model/ export, or a checkpoint folder."
        ),
        temperature: float = typer.Option(0.8, help="0 = greedy."),
        top_p: float = typer.Option(0.95, help="Nucleus sampling mass."),
        max_tokens: int = typer.Option(100, help="Tokens to generate at most."),
        seed: int = typer.Option(0, help="Sampling seed."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
    ) -> None:
        """Sample a continuation of PROMPT from a trained model."""
        from gigafactory.train.export import generate, load_for_inference

        model, tok = load_for_inference(checkpoint, device)
        console = Console(highlight=False)
        console.print(f"[bold]{prompt}[/]", end="")
        for piece in generate(model, tok, prompt, max_tokens, temperature, top_p, seed):
            console.print(piece, end="", markup=False)
        console.print()

    @app.command("export")
    def export_cmd(
        checkpoint: Path = typer.Option(..., help="Run folder or checkpoint folder."),
        out: Path = typer.Option(..., help="Folder to write (safetensors + config + tokenizer)."),
    ) -> None:
        """Export a trained model to safetensors + config.json + tokenizer.json."""
        from gigafactory.train.export import export_model, find_weights, load_for_inference

        weights = find_weights(checkpoint)
        model, tok = load_for_inference(weights.folder)
        step = weights.step
        written = export_model(model.state_dict(), model.spec, tok, out, step)
        Console().print(
            f"exported {model.num_params():,} parameters (step {step}) to {written}",
            highlight=False,
        )
