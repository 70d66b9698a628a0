"""`gigafactory compare`: one model and token budget planned on several clusters, side by side,
and how each scales with its GPU count."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console

from gigafactory.cli.plan import Precision, rows_table

console = Console()


def register(app: typer.Typer) -> None:
    """Add ``compare`` to ``app``."""

    @app.command("compare")
    def compare_cmd(
        clusters: list[str] | None = typer.Argument(
            None, help="Cluster presets or YAML files (default: colossus meta-24k)."
        ),
        model: str = typer.Option("grok-1", help="Model preset or YAML file."),
        tokens: float = typer.Option(0.0, help="Token budget of the run (default 6e12)."),
        global_batch: int = typer.Option(0, help="Sequences per step (default 4096)."),
        precision: Precision = typer.Option(Precision.bf16, help="Matmul precision."),
        checkpoint_s: float = typer.Option(10.0, help="Seconds each checkpoint stalls training."),
        restart_s: float = typer.Option(300.0, help="Seconds to restart after an interruption."),
        points: int = typer.Option(6, help="GPU counts per cluster in the scaling sweep."),
        study: str = typer.Option(
            "llama3", help="Failure rates for goodput: llama3, rsc1, rsc2, rsc-jobs."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        plot: Path | None = typer.Option(None, help="Write the scaling sweep as a PNG."),
        report: Path | None = typer.Option(None, help="Write a self-contained HTML report."),
    ) -> None:
        """Plan the same model and token budget on several clusters: best layout, step time,
        MFU, days, goodput after failures, MW, MWh and $ side by side, and a scaling sweep
        (GPU count → days, MFU, goodput)."""
        from gigafactory.plan.compare import DEFAULT_CLUSTERS, compare_clusters, sweep_sizes
        from gigafactory.plan.report import (
            SCALING_COLUMNS,
            check_output_path,
            compare_columns,
            compare_report_html,
            compare_rows,
            save_figure,
            scaling_figure,
            scaling_rows,
        )
        from gigafactory.plan.run import DEFAULT_TOKENS
        from gigafactory.plan.search import DEFAULT_GLOBAL_BATCH
        from gigafactory.reliability import ReliabilityScenario
        from gigafactory.reliability.studies import load_study
        from gigafactory.spec import load_cluster, load_model
        from gigafactory.spec.options import PlanOptions

        PlanOptions(
            global_batch=global_batch, tokens=tokens, checkpoint_s=checkpoint_s,
            restart_s=restart_s,
        )  # fmt: skip
        check_output_path(plot)
        check_output_path(report)
        failures = load_study(study)
        specs = [load_cluster(c) for c in clusters or DEFAULT_CLUSTERS]
        for c in specs:
            sweep_sizes(c, points)  # refuses a bad --points before any search
        result = compare_clusters(
            load_model(model),
            specs,
            tokens or DEFAULT_TOKENS,
            global_batch or DEFAULT_GLOBAL_BATCH,
            precision.value,
            ReliabilityScenario(checkpoint_s=checkpoint_s, restart_s=restart_s, failures=failures),
            points,
        )
        if as_json:
            out = dataclasses.asdict(result)
            for plan, data in zip(result.plans, out["plans"], strict=True):
                data["run"]["cost_usd"] = plan.run.cost_usd
                data["run"]["power_note"] = plan.run.power_note()
                data["mfu"] = plan.step.mfu
                data["step_s"] = plan.step.step_s
            typer.echo(json.dumps(out, default=str))
        else:
            title = f"{result.model}, {result.tokens:.3g} tokens, side by side"
            console.print(rows_table(title, compare_columns(result), compare_rows(result)))
            for p in result.plans:
                if p.run.power_exceeds_budget:
                    console.print(
                        f"[bold red]power ({p.cluster}):[/] {p.run.power_note()}",
                        highlight=False,
                        soft_wrap=True,
                    )
            console.print(rows_table("scaling by GPU count", SCALING_COLUMNS, scaling_rows(result)))
        if plot:
            save_figure(scaling_figure(result), plot)
        if report:
            report.write_text(compare_report_html(result), encoding="utf-8")
