"""`gigafactory reliability`: interruptions, checkpoint cadence and goodput at scale."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


def register(app: typer.Typer) -> None:
    @app.command("reliability")
    def reliability_cmd(
        gpus: int = typer.Option(100_000, help="GPUs the job spans."),
        days: float = typer.Option(54.0, help="Failure-free training days the run needs."),
        checkpoint_s: float = typer.Option(10.0, help="Seconds each checkpoint stalls training."),
        restart_s: float = typer.Option(300.0, help="Seconds to detect, reschedule and reload."),
        manual_repair_h: float = typer.Option(
            4.0, help="Hours for an interruption needing a person."
        ),
        interval_s: float = typer.Option(0.0, help="Work between checkpoints; 0 = optimal."),
        failure_scale: float = typer.Option(1.0, help="Failure rates relative to the study's."),
        study: str = typer.Option(
            "llama3", help="Failure rates from: llama3, rsc1, rsc2, rsc-jobs (Meta RSC, 2024)."
        ),
        trials: int = typer.Option(200, help="Monte Carlo runs to simulate."),
        seed: int = typer.Option(0, help="Random seed of the simulation."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
        plot: Path | None = typer.Option(None, help="Write goodput vs cluster size to a PNG."),
    ) -> None:
        """Interruptions at 100k-GPU scale (rates from Llama 3's 16k-GPU run, or Meta's research
        clusters with --study) and the goodput left after checkpoints, rework and restarts:
        closed form and Monte Carlo."""
        from gigafactory.plan.report import check_output_path
        from gigafactory.reliability import ReliabilityScenario, analyze, simulate
        from gigafactory.reliability.studies import load_study

        check_output_path(plot)

        scenario = ReliabilityScenario(
            gpus=gpus,
            work_days=days,
            checkpoint_s=checkpoint_s,
            restart_s=restart_s,
            manual_repair_s=manual_repair_h * 3600,
            interval_s=interval_s,
            failure_scale=failure_scale,
            failures=load_study(study),
        )
        closed = analyze(scenario)
        console = Console()
        with Progress(
            TextColumn("simulating"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task("sim", total=1.0)
            sim = simulate(
                scenario, trials=trials, seed=seed, progress=lambda f: bar.update(task, completed=f)
            )
        if plot is not None:
            _plot(scenario, plot)
        if as_json:
            print(
                json.dumps(
                    {
                        "study": study,
                        "source": scenario.failures.source,
                        "closed_form": dataclasses.asdict(closed),
                        "simulation": dataclasses.asdict(sim),
                    },
                    indent=2,
                )
            )
            return
        table = Table(title=f"Reliability of a {gpus:,}-GPU job ({days:g} days of work)")
        table.add_column("quantity")
        table.add_column("value", justify="right")
        rows = [
            ("job MTBF (unexpected)", f"{closed.mtbf_hours * 60:,.1f} min"),
            (
                "interruptions per day",
                f"{closed.interruptions_per_day:,.1f} + {closed.planned_per_day:.2f} planned",
            ),
            ("optimal checkpoint interval", f"{closed.checkpoint_interval_s:,.0f} s"),
            ("goodput (closed form)", f"{closed.goodput:.1%}"),
            (
                "goodput (simulated, p5–p95)",
                f"{sim.goodput_mean:.1%} ({sim.goodput_p5:.1%}–{sim.goodput_p95:.1%})",
            ),
            (
                "wall-clock days (simulated)",
                f"{sim.wall_days_mean:,.1f} (p95 {sim.wall_days_p95:,.1f})",
            ),
            ("interruptions in the run", f"{sim.interruptions_mean:,.0f}"),
        ]
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
        lost = Table(title="Where the wall-clock days go (simulated mean)")
        lost.add_column("activity")
        lost.add_column("days", justify="right")
        lost.add_column("share", justify="right")
        for name, value in sim.days.items():
            lost.add_row(name, f"{value:,.2f}", f"{value / sim.wall_days_mean:.1%}")
        console.print(lost)
        causes = Table(
            title="Interruptions per day by root cause",
            caption=f"rates: {scenario.failures.source}",
        )
        causes.add_column("cause")
        causes.add_column("category")
        causes.add_column("per day", justify="right")
        for c in sorted(closed.causes, key=lambda c: -float(c["per_day"]))[:8]:
            causes.add_row(str(c["cause"]), str(c["category"]), f"{float(c['per_day']):.2f}")
        console.print(causes)
        if plot is not None:
            console.print(f"plot written to {plot}")


def _plot(scenario, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import dataclasses as dc

    import matplotlib.pyplot as plt

    from gigafactory.reliability.sweep import goodput_curve

    fig, ax = plt.subplots(figsize=(7, 4))
    for restart in (60, 300, 900):
        curve = goodput_curve(dc.replace(scenario, restart_s=restart))
        ax.plot([c[0] for c in curve], [100 * c[2] for c in curve], label=f"restart {restart} s")
    ax.axvline(scenario.gpus, color="grey", linestyle=":", label=f"{scenario.gpus:,} GPUs")
    ax.set_xscale("log")
    ax.set_xlabel("GPUs in the job")
    ax.set_ylabel("goodput (%)")
    ax.set_title(f"Goodput vs scale (checkpoint stall {scenario.checkpoint_s:g} s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
