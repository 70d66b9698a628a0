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


class GradReduce(StrEnum):
    default = "default"
    fp32 = "fp32"
    bf16 = "bf16"


def parse_batch_range(text: str) -> tuple[int, int] | None:
    """``LO:HI`` (sequences) → (lo, hi); '' → None."""
    from gigafactory.errors import LayoutError

    if not text:
        return None
    lo, sep, hi = text.partition(":")
    if not sep or not lo.strip().isdigit() or not hi.strip().isdigit():
        raise LayoutError(f"--batch-range {text!r}: give LO:HI in sequences, e.g. 4096:8192")
    if not 1 <= int(lo) <= int(hi):
        raise LayoutError(f"--batch-range {text!r}: need 1 <= LO <= HI")
    return int(lo), int(hi)


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


def search_notes(result: Any, budget: float) -> list[str]:
    """What the search changed or left unused, in words: GPUs left as hot spares (and the
    best layout on every GPU), and any change of the global batch."""
    from gigafactory.plan.search import batch_change

    best, n = result.best[0], result.cluster_gpus
    days = budget / best.tokens_per_s / 86400
    notes = []
    if best.gpus < n:
        text = (
            f"best use of the cluster: {best.gpus:,} of {n:,} GPUs ({days:,.2f} days); "
            f"{n - best.gpus:,} GPUs stay idle as hot spares"
        )
        full = result.best_all_gpus
        if full is None:
            text += f"; no layout that fits uses all {n:,} GPUs with this batch"
        else:
            full_days = budget / full.tokens_per_s / 86400
            text += f"; on all {n:,} GPUs the best layout takes {full_days:,.2f} days"
        notes.append(text)
    if change := batch_change(result):
        notes.append(f"{change}: allowed by --batch-range")
    return notes


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
        vpp: int | None = typer.Option(
            None, help="Interleaved chunks per pipeline stage (blank: searched)."
        ),
        cp: int = typer.Option(1, help="Context parallel."),
        ep: int = typer.Option(1, help="Expert parallel (inside dp·cp)."),
        sharding: Sharding | None = typer.Option(
            None, help="Optimizer/weight sharding (blank: zero1, the distributed optimizer)."
        ),
        global_batch: int = typer.Option(0, help="Sequences per step (default 4096)."),
        micro_batch: int | None = typer.Option(
            None, help="Sequences per micro-batch (blank: searched)."
        ),
        seq: int = typer.Option(0, help="Sequence length (default: the model's)."),
        recompute: Recompute | None = typer.Option(
            None, help="Activation recompute (blank: the lightest that fits)."
        ),
        precision: Precision | None = typer.Option(
            None, help="Matmul precision (default: bf16 for one layout; searched otherwise)."
        ),
        grad_reduce: GradReduce = typer.Option(
            GradReduce.default, help="Gradient reduce dtype of one layout (default: the stack's)."
        ),
        first_stage_layers: int = typer.Option(
            0, help="Layers on the first pipeline stage (uneven stages; 0: even or completed)."
        ),
        last_stage_layers: int = typer.Option(0, help="Layers on the last pipeline stage."),
        batch_range: str = typer.Option(
            "", help="Let the search change the global batch within LO:HI sequences."
        ),
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
        from gigafactory.plan.complete import complete_layout
        from gigafactory.plan.report import check_output_path
        from gigafactory.plan.run import DEFAULT_TOKENS, estimate_run
        from gigafactory.plan.search import DEFAULT_GLOBAL_BATCH, search_layouts
        from gigafactory.spec import load_cluster, load_hardware, load_model
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
        notes: list[str] = []
        if tp is not None or pp is not None:
            from gigafactory.errors import LayoutError

            t, p = tp or 1, pp or 1
            if n % (t * p * cp):
                raise LayoutError(f"tp·pp·cp = {t * p * cp} does not divide {n} GPUs")
            given = {
                "tp": t, "pp": p, "cp": cp, "ep": ep, "dp": n // (t * p * cp), "vpp": vpp,
                "micro_batch": micro_batch, "global_batch": global_batch or None,
                "recompute": recompute.value if recompute else None,
                "sharding": sharding.value if sharding else None,
                "precision": (precision or Precision.bf16).value,
                "first_stage_layers": first_stage_layers or None,
                "last_stage_layers": last_stage_layers or None,
                "grad_reduce": "" if grad_reduce is GradReduce.default else grad_reduce.value,
            }  # fmt: skip
            done = complete_layout(m, h, c, given, s)
            best = done.estimate
            notes += [f"{k} {v} (left blank)" for k, v in done.notes.items()]
            if best.layout.uneven and not (first_stage_layers or last_stage_layers):
                notes.append(
                    f"pp·vpp = {p * best.layout.vpp} does not divide the {m.layers} layers: "
                    f"uneven stages completed, first {best.layout.first_stage_layers} and last "
                    f"{best.layout.last_stage_layers} layers (Megatron-Core "
                    "--decoder-first/last-pipeline-num-layers); set them to override"
                )
            shown = [best]
        else:
            rng = parse_batch_range(batch_range)
            searched = search_layouts(
                m, h, c, n, gbs, precision.value if precision else None, top, s, batch_range=rng
            )
            if not searched.best:
                from gigafactory.errors import LayoutError

                allowed = f"{rng[0]}–{rng[1]}" if rng else f"{gbs}"
                raise LayoutError(
                    f"no layout of {m.name} fits on up to {n} × {h.name} with a global batch "
                    f"of {allowed} sequences; allow --batch-range, add GPUs, or use a larger "
                    "accelerator"
                )
            shown = searched.best
            best = shown[0]
            notes += search_notes(searched, budget)
        from gigafactory.reliability import ReliabilityScenario

        failures = ReliabilityScenario(checkpoint_s=checkpoint_s, restart_s=restart_s)
        run = estimate_run(best, c, h, budget, failures)
        if as_json:
            out: dict[str, Any] = {"plan": _step_dict(best), "run": dataclasses.asdict(run)}
            out["run"]["cost_usd"] = run.cost_usd
            out["run"]["power_note"] = run.power_note()
            if searched is not None:
                out["search"] = {
                    "evaluated": searched.evaluated,
                    "bounded": searched.bounded,
                    "fitting": searched.fitting,
                    "seconds": searched.seconds,
                    "cluster_gpus": searched.cluster_gpus,
                    "spare_gpus": searched.spare_gpus,
                    "requested_global_batch": searched.requested_batch,
                    "best": [_step_dict(e) for e in shown],
                    "best_all_gpus": (
                        _step_dict(searched.best_all_gpus) if searched.best_all_gpus else None
                    ),
                }
            out["notes"] = notes
            typer.echo(json.dumps(out, default=str))
        else:
            if searched is not None:
                from gigafactory.plan.report import LAYOUT_COLUMNS, layout_rows

                title = (
                    f"layouts that train {budget:.3g} tokens soonest: {searched.evaluated:,} "
                    f"evaluated in {searched.seconds:.2f} s ({searched.bounded:,} bounded out by "
                    f"compute alone, {searched.fitting:,} fit and timed)"
                )
                console.print(rows_table(title, LAYOUT_COLUMNS, layout_rows(shown, budget)))
            for note in notes:
                console.print(f"[yellow]note:[/] {note}")
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
        holdout: bool = typer.Option(
            False,
            "--holdout",
            help="Validate the packaged hold-out runs the calibration never saw.",
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        plot: Path | None = typer.Option(None, help="Write a predicted-vs-published PNG."),
    ) -> None:
        """Predict published training runs with their own layouts; report the errors.

        The headline is out of sample: each row is predicted from a calibration refitted
        without the row's source (leave-one-source-out), shown next to the in-sample error
        of the catalog calibration. Blank layout fields are completed and shown.
        """
        from gigafactory.plan.calibrate import out_of_sample
        from gigafactory.plan.report import check_output_path
        from gigafactory.plan.runs import default_holdout_path
        from gigafactory.plan.validate import validate

        check_output_path(plot)
        if holdout and file is not None:
            from gigafactory.errors import SpecError

            raise SpecError("validate", "file", "give a CSV file or --holdout, not both")
        check_output_path(plot)
        path = default_holdout_path() if holdout else file
        report = validate(path)
        oos = out_of_sample(path)
        if as_json:
            keys = ("id", "source", "metric", "published", "predicted", "error_pct", "in_scope")
            rows = [
                {
                    **{k: getattr(r, k) for k in keys},
                    "out_of_sample_predicted": o.predicted,
                    "out_of_sample_error_pct": o.error_pct,
                    "completed": r.completed,
                }
                for r, o in zip(report.rows, oos.rows, strict=True)
            ]
            summary = {
                name: {"median_abs_error_pct": rep.median_abs_error_pct,
                       "max_abs_error_pct": rep.max_abs_error_pct}
                for name, rep in (("out_of_sample", oos), ("in_sample", report))
            }  # fmt: skip
            summary["out_of_sample"]["method"] = "leave-one-source-out"
            typer.echo(json.dumps({"rows": rows, **summary}))
        else:
            t = Table(title="planner vs published runs")
            for col in (
                "id",
                "metric",
                "published",
                "catalog",
                "err %",
                "out-of-sample",
                "err %",
            ):
                t.add_column(col, justify="left" if col in ("id", "metric") else "right")
            for r, o in zip(report.rows, oos.rows, strict=True):
                flag = "" if r.in_scope else " (out of scope)"
                t.add_row(
                    r.id + flag, r.metric, f"{r.published:,.1f}", f"{r.predicted:,.1f}",
                    f"{r.error_pct:+.1f}", f"{o.predicted:,.1f}", f"{o.error_pct:+.1f}",
                )  # fmt: skip
            console.print(t)
            filled = [r for r in report.rows if r.completed]
            if filled:
                t = Table(title="blank fields completed by the planner")
                t.add_column("id")
                t.add_column("completion")
                for r in filled:
                    t.add_row(r.id, "; ".join(f"{k} {v}" for k, v in r.completed.items()))
                console.print(t)
            console.print(
                f"[bold]out of sample (leave-one-source-out): median |error| "
                f"{oos.median_abs_error_pct:.1f}%, max {oos.max_abs_error_pct:.1f}%[/]"
            )
            console.print(
                f"catalog calibration (fitted on every packaged row; in sample for those): "
                f"median |error| {report.median_abs_error_pct:.1f}%, max "
                f"{report.max_abs_error_pct:.1f}% (rows in scope)"
            )
        if plot:
            _plot_validation(oos, plot)


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
