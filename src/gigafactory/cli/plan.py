"""CLI verbs of the plan part: ``plan`` (one layout, or a search) and ``validate``."""

from __future__ import annotations

import dataclasses
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


class Sharding(StrEnum):
    none = "none"
    zero1 = "zero1"
    fsdp = "fsdp"


class Recompute(StrEnum):
    none = "none"
    selective = "selective"
    full = "full"


class Precision(StrEnum):
    bf16 = "bf16"
    fp8 = "fp8"


def _step_dict(est: Any) -> dict[str, Any]:
    out = dataclasses.asdict(est)
    out["summary"] = est.summary()
    out["memory"]["total_bytes"] = est.memory.total_bytes
    out["memory"]["fits"] = est.memory.fits
    out["time"]["total_s"] = est.time.total_s
    return out


def rows_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Table:
    t = Table(title=title)
    for i, col in enumerate(columns):
        t.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        t.add_row(*row)
    return t


def _render_step(est: Any, run: Any) -> None:
    from gigafactory.plan.report import layout_text, memory_rows, step_rows, throughput_rows

    status = "[green]fits[/]" if est.memory.fits else "[bold red]DOES NOT FIT[/]"
    console.print(
        f"[bold]{est.model}[/] on {est.gpus:,} × {est.hardware} ({est.cluster or 'no cluster'})"
        f" — {layout_text(est.layout)}"
    )
    console.print(rows_table(f"memory per GPU ({status})", ("part", "GB"), memory_rows(est)))
    console.print(rows_table(f"step time {est.step_s:,.3f} s", ("part", "s", "%"), step_rows(est)))
    console.print(rows_table("throughput", ("metric", "value"), throughput_rows(est, run)))
    _render_power(run)


def _render_power(run: Any) -> None:
    """Say clearly when the facility power exceeds the cluster's supply."""
    if run is not None and run.power_exceeds_budget:
        console.print(f"[bold red]power:[/] {run.power_note()}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``validate`` to ``app``."""

    @app.command("plan")
    def plan_cmd(
        model: str = typer.Option("grok-1", help="Model preset or YAML file."),
        cluster: str = typer.Option("colossus", help="Cluster preset or YAML file."),
        gpu: str = typer.Option("", help="Accelerator preset (default: the cluster's)."),
        gpus: int = typer.Option(0, help="GPUs for the run (default: the whole cluster)."),
        tp: int | None = typer.Option(None, help="Tensor parallel; with no degree given, search."),
        pp: int | None = typer.Option(None, help="Pipeline parallel."),
        vpp: int = typer.Option(1, help="Interleaved chunks per pipeline stage."),
        cp: int = typer.Option(1, help="Context parallel."),
        ep: int = typer.Option(1, help="Expert parallel (inside dp·cp)."),
        sharding: Sharding = typer.Option(Sharding.zero1, help="Optimizer/weight sharding."),
        global_batch: int = typer.Option(0, help="Sequences per step (default 4096)."),
        micro_batch: int = typer.Option(1, help="Sequences per micro-batch."),
        seq: int = typer.Option(0, help="Sequence length (default: the model's)."),
        recompute: Recompute = typer.Option(Recompute.none, help="Activation recompute."),
        precision: Precision = typer.Option(Precision.bf16, help="Matmul precision."),
        tokens: float = typer.Option(0.0, help="Token budget of the run (default 6e12)."),
        checkpoint_s: float = typer.Option(10.0, help="Seconds each checkpoint stalls training."),
        restart_s: float = typer.Option(300.0, help="Seconds to restart after an interruption."),
        top: int = typer.Option(5, help="Layouts to show when searching."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        plot: Path | None = typer.Option(None, help="Write a PNG of the breakdowns."),
        report: Path | None = typer.Option(None, help="Write a self-contained HTML report."),
    ) -> None:
        """Plan a training step and run: memory, step time, MFU, days, power, energy, cost.

        With no layout degrees (--tp/--pp) it searches the layouts that fit and plans the
        fastest; with no arguments at all it plans Grok-1 on Colossus.
        """
        from gigafactory.plan.report import check_output_path
        from gigafactory.plan.run import DEFAULT_TOKENS, estimate_run
        from gigafactory.plan.search import DEFAULT_GLOBAL_BATCH, search_layouts
        from gigafactory.plan.step import estimate_step
        from gigafactory.spec import LayoutSpec, load_cluster, load_hardware, load_model
        from gigafactory.spec.options import PlanOptions

        PlanOptions(
            gpus=gpus, tp=tp, pp=pp, vpp=vpp, cp=cp, ep=ep, global_batch=global_batch,
            micro_batch=micro_batch, seq=seq, tokens=tokens, checkpoint_s=checkpoint_s,
            restart_s=restart_s, top=top,
        )  # fmt: skip
        check_output_path(plot)
        check_output_path(report)
        m = load_model(model)
        c = load_cluster(cluster)
        h = load_hardware(gpu or c.gpu)
        n = gpus or c.gpus
        c = c.with_gpus(n) if n != c.gpus else c
        s = seq or m.seq_len
        budget = tokens or DEFAULT_TOKENS
        gbs = global_batch or DEFAULT_GLOBAL_BATCH
        searched = None
        if tp is not None or pp is not None:
            t, p = tp or 1, pp or 1
            if n % (t * p * cp):
                from gigafactory.errors import LayoutError

                raise LayoutError(f"tp·pp·cp = {t * p * cp} does not divide {n} GPUs")
            layout = LayoutSpec(
                tp=t, pp=p, vpp=vpp, cp=cp, ep=ep, dp=n // (t * p * cp),
                sharding=sharding.value, micro_batch=micro_batch, global_batch=gbs,
                recompute=recompute.value, precision=precision.value,
            )  # fmt: skip
            best = estimate_step(m, layout, h, c, s)
            shown = [best]
        else:
            searched = search_layouts(m, h, c, n, gbs, precision.value, top, s)
            if not searched.best:
                from gigafactory.errors import LayoutError

                raise LayoutError(
                    f"no layout of {m.name} fits on {n} × {h.name} with a global batch near "
                    f"{gbs}; raise --global-batch, add GPUs, or use a larger accelerator"
                )
            shown = searched.best
            best = shown[0]
        from gigafactory.reliability import ReliabilityScenario

        failures = ReliabilityScenario(checkpoint_s=checkpoint_s, restart_s=restart_s)
        run = estimate_run(best, c, h, budget, failures)
        if as_json:
            out: dict[str, Any] = {"plan": _step_dict(best), "run": dataclasses.asdict(run)}
            out["run"]["cost_usd"] = run.cost_usd
            out["run"]["power_note"] = run.power_note()
            if searched is not None:
                out["search"] = {
                    "considered": searched.considered,
                    "valid": searched.valid,
                    "fitting": searched.fitting,
                    "best": [_step_dict(e) for e in shown],
                }
            typer.echo(json.dumps(out, default=str))
        else:
            if searched is not None:
                from gigafactory.plan.report import LAYOUT_COLUMNS, layout_rows

                title = (
                    f"fastest layouts that fit ({searched.fitting} of "
                    f"{searched.considered} considered)"
                )
                console.print(rows_table(title, LAYOUT_COLUMNS, layout_rows(shown)))
            _render_step(best, run)
            if not best.fits:
                console.print(
                    "[bold red]does not fit:[/] reduce memory with more --tp/--pp, "
                    "--sharding fsdp or --recompute selective/full"
                )
        if plot:
            from gigafactory.plan.report import save_figure, step_figure

            save_figure(step_figure(best), plot)
        if report:
            from gigafactory.plan.report import plan_report_html

            fastest = shown if searched is not None else None
            report.write_text(plan_report_html(best, run, fastest), encoding="utf-8")

    @app.command("validate")
    def validate_cmd(
        file: Path | None = typer.Argument(None, help="CSV of published runs (default: packaged)."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        plot: Path | None = typer.Option(None, help="Write a predicted-vs-published PNG."),
    ) -> None:
        """Predict published training runs with their own layouts; report the errors."""
        from gigafactory.plan.report import check_output_path
        from gigafactory.plan.validate import validate

        check_output_path(plot)
        report = validate(file)
        if as_json:
            rows = [
                {k: getattr(r, k) for k in ("id", "metric", "published", "predicted", "error_pct")}
                for r in report.rows
            ]
            typer.echo(
                json.dumps(
                    {
                        "rows": rows,
                        "median_abs_error_pct": report.median_abs_error_pct,
                        "max_abs_error_pct": report.max_abs_error_pct,
                    }
                )
            )
        else:
            t = Table(title="planner vs published runs")
            for col in ("id", "metric", "published", "predicted", "error %"):
                t.add_column(col, justify="left" if col in ("id", "metric") else "right")
            for r in report.rows:
                flag = "" if r.in_scope else " (out of scope)"
                t.add_row(
                    r.id + flag, r.metric, f"{r.published:,.1f}", f"{r.predicted:,.1f}",
                    f"{r.error_pct:+.1f}",
                )  # fmt: skip
            console.print(t)
            console.print(
                f"median |error| {report.median_abs_error_pct:.1f}%, "
                f"max |error| {report.max_abs_error_pct:.1f}% (rows in scope)"
            )
        if plot:
            _plot_validation(report, plot)


def _plot_validation(report: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    for r in report.rows:
        ax.scatter(r.published, r.predicted, color="C0" if r.in_scope else "C3")
        ax.annotate(r.id, (r.published, r.predicted), fontsize=6)
    lo = min(min(r.published, r.predicted) for r in report.rows)
    hi = max(max(r.published, r.predicted) for r in report.rows)
    ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("published")
    ax.set_ylabel("predicted")
    ax.set_title(f"median |err| {report.median_abs_error_pct:.1f}%")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
