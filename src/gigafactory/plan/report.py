"""What a plan or a comparison shows: table rows, figures, and one self-contained HTML report.

The rows are shared by the terminal tables (the CLI renders them with rich) and the HTML
report, so both always say the same thing. The report is a single file: inline CSS, plots as
base64 PNG ``data:`` images, no scripts and no external URL, so it reads offline.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import IO, Any

from gigafactory.errors import OutputPathError

Rows = list[tuple[str, ...]]


def check_output_path(path: Path | None) -> None:
    """Refuse, before any work, a file the user asked for that cannot be written."""
    if path is None:
        return
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; give a file name such as {path}/out.png")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: folder {parent} does not exist; create it")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputPathError(f"cannot write {path}: no write permission; choose another path")


def layout_text(layout: Any) -> str:
    """A layout in one line: tp=8 pp=1 cp=2 ep=4 dp=6250 zero1 mb=1 gbs=6250 …"""
    parts = [f"tp={layout.tp}", f"pp={layout.pp}"]
    if layout.vpp > 1:
        parts.append(f"vpp={layout.vpp}")
    parts += [f"cp={layout.cp}", f"ep={layout.ep}", f"dp={layout.dp}", layout.sharding]
    parts += [f"mb={layout.micro_batch}", f"gbs={layout.global_batch}"]
    parts += [f"recompute={layout.recompute}", layout.precision]
    return " ".join(parts)


def memory_rows(est: Any) -> Rows:
    """(part, GB per GPU)."""
    mem = est.memory
    return [
        (name, f"{value / 1e9:,.1f}")
        for name, value in (
            ("weights", mem.weights_bytes),
            ("gradients", mem.gradients_bytes),
            ("optimizer states", mem.optimizer_bytes),
            ("activations", mem.activations_bytes),
            ("total", mem.total_bytes),
            (f"usable (HBM {mem.capacity_bytes / 1e9:g} GB − reserve)", mem.usable_bytes),
        )
    ]


def step_rows(est: Any) -> Rows:
    """(part, seconds, % of the step) for every non-zero part of the step time."""
    return [
        (name, f"{value:,.3f}", f"{100 * value / est.step_s:.1f}")
        for name, value in est.time.parts().items()
        if value > 0
    ]


def throughput_rows(est: Any, run: Any | None) -> Rows:
    """(metric, value): utilisation and throughput, then the run's totals when given."""
    rows = [
        ("MFU", f"{100 * est.mfu:.1f}%"),
        ("HFU", f"{100 * est.hfu:.1f}%"),
        ("model TFLOP/s per GPU", f"{est.model_tflops_per_gpu:,.0f}"),
        ("tokens/s per GPU", f"{est.tokens_per_s_per_gpu:,.0f}"),
        ("tokens/s (cluster)", f"{est.tokens_per_s:,.3g}"),
    ]
    if run is None:
        return rows
    power = f"{run.power_mw:,.1f} MW"
    if run.power_budget_mw:
        over = "OVER" if run.power_exceeds_budget else "within"
        power += f" ({over} the {run.power_budget_mw:,.0f} MW supply)"
    return [
        *rows,
        ("token budget", f"{run.tokens:.3g}"),
        ("days without failures", f"{run.days:,.1f}"),
        ("goodput after failures", f"{100 * run.goodput:.1f}%"),
        ("wall-clock days", f"{run.wall_days:,.1f}"),
        ("interruptions (expected)", f"{run.interruptions:,.0f}"),
        ("checkpoint every", f"{run.checkpoint_interval_s:,.0f} s"),
        ("GPU-hours", f"{run.gpu_hours:,.3g}"),
        ("facility power", power),
        ("energy", f"{run.energy_mwh:,.0f} MWh"),
        ("cost", f"${run.cost_usd / 1e6:,.1f}M"),
    ]


LAYOUT_COLUMNS = ("layout", "step s", "MFU", "GB/GPU", "tokens/s/GPU")


def layout_rows(steps: list[Any]) -> Rows:
    """One row per layout: the fastest layouts of a search."""
    return [
        (
            layout_text(e.layout),
            f"{e.step_s:.2f}",
            f"{100 * e.mfu:.1f}%",
            f"{e.memory.total_bytes / 1e9:.1f}",
            f"{e.tokens_per_s_per_gpu:,.0f}",
        )
        for e in steps
    ]


def compare_columns(comparison: Any) -> tuple[str, ...]:
    """The side-by-side table's header: one column per cluster."""
    return ("", *(p.cluster for p in comparison.plans))


def compare_rows(comparison: Any) -> Rows:
    """One row per quantity, one column per cluster of a comparison."""

    def power(run: Any) -> str:
        return f"{run.power_mw:,.1f}" + (" (OVER supply)" if run.power_exceeds_budget else "")

    quantities = (
        ("GPUs", lambda p: f"{p.gpus:,} × {p.hardware}"),
        ("best layout", lambda p: layout_text(p.step.layout)),
        ("step s", lambda p: f"{p.step.step_s:.3f}"),
        ("MFU", lambda p: f"{100 * p.step.mfu:.1f}%"),
        ("days without failures", lambda p: f"{p.run.days:,.1f}"),
        ("goodput after failures", lambda p: f"{100 * p.run.goodput:.1f}%"),
        ("wall-clock days", lambda p: f"{p.run.wall_days:,.1f}"),
        ("facility MW", lambda p: power(p.run)),
        ("energy MWh", lambda p: f"{p.run.energy_mwh:,.0f}"),
        ("cost", lambda p: f"${p.run.cost_usd / 1e6:,.1f}M"),
        ("fastest GPU count swept", lambda p: fastest(comparison.fastest_size(p.cluster))),
    )
    return [(name, *(get(p) for p in comparison.plans)) for name, get in quantities]


def fastest(point: Any) -> str:
    return f"{point.gpus:,} GPUs: {point.wall_days:,.1f} wall-clock days"


SCALING_COLUMNS = ("cluster", "GPUs", "days", "wall days", "MFU", "goodput", "MW")


def scaling_rows(comparison: Any) -> Rows:
    return [
        (
            s.cluster, f"{s.gpus:,}", f"{s.days:,.1f}", f"{s.wall_days:,.1f}",
            f"{100 * s.mfu:.1f}%", f"{100 * s.goodput:.1f}%", f"{s.power_mw:,.1f}",
        )
        if s.fits
        else (s.cluster, f"{s.gpus:,}", "no layout fits", "", "", "", "")
        for s in comparison.scaling
    ]  # fmt: skip


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def matplotlib_ticker() -> Any:
    import matplotlib.ticker

    return matplotlib.ticker


def step_figure(est: Any) -> Any:
    """Step-time breakdown (s) beside the memory breakdown (GB/GPU) against usable HBM."""
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    parts = {k: v for k, v in est.time.parts().items() if v > 0}
    a.barh(list(parts), list(parts.values()))
    a.set_xlabel("seconds per step")
    a.set_title(f"step time {est.step_s:.2f} s, MFU {100 * est.mfu:.1f}%")
    mem = est.memory
    names = ["weights", "gradients", "optimizer", "activations"]
    vals = [mem.weights_bytes, mem.gradients_bytes, mem.optimizer_bytes, mem.activations_bytes]
    b.bar(names, [v / 1e9 for v in vals])
    b.axhline(mem.usable_bytes / 1e9, color="red", linestyle="--", label="usable HBM")
    b.set_ylabel("GB per GPU")
    b.legend()
    fig.tight_layout()
    return fig


def scaling_figure(comparison: Any) -> Any:
    """Days (failure-free and wall-clock), MFU and goodput against GPUs, one line per cluster."""
    plt = _pyplot()
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    for i, name in enumerate(dict.fromkeys(s.cluster for s in comparison.scaling)):
        pts = sorted((s for s in comparison.scaling if s.cluster == name and s.fits),
                     key=lambda s: s.gpus)  # fmt: skip
        gpus = [s.gpus for s in pts]
        a.plot(gpus, [s.wall_days for s in pts], "o-", color=f"C{i}", label=f"{name} wall-clock")
        a.plot(gpus, [s.days for s in pts], "o:", color=f"C{i}", label=f"{name} no failures")
        b.plot(gpus, [100 * s.mfu for s in pts], "o-", color=f"C{i}", label=name)
        c.plot(gpus, [100 * s.goodput for s in pts], "o-", color=f"C{i}", label=name)
    for ax, label in ((a, "days to train"), (b, "MFU (%)"), (c, "goodput after failures (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("GPUs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    a.set_yscale("log")
    a.yaxis.set_major_formatter(matplotlib_ticker().ScalarFormatter())
    fig.suptitle(f"{comparison.model}, {comparison.tokens:.3g} tokens: scaling by GPU count")
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: Path | IO[bytes]) -> None:
    """Write ``fig`` as a PNG (to a file or a buffer) and free it."""
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def figure_data_uri(fig: Any) -> str:
    """``fig`` as a base64 PNG ``data:`` URI (and freed)."""
    buf = io.BytesIO()
    save_figure(fig, buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1150px;
color:#1d2330;line-height:1.4}h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em;
border-bottom:1px solid #ccd;padding-bottom:.2em}table{border-collapse:collapse;margin:.5em 0}
th,td{border:1px solid #ccd;padding:.25em .6em;font-size:.9em}th{background:#eef1f6}
td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.warn{background:#fdecea;border-left:4px solid #c62828;padding:.5em 1em;font-weight:600}
.ok{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5em 1em}
.meta{color:#556;font-size:.85em}
"""


def _table(columns: tuple[str, ...], rows: Rows, first_text: int = 1) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{'' if i < first_text else ' class=n'}>{html.escape(str(v))}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}"
        '<p class="meta">Written by gigafactory; formulas and sources: docs/plan.md.</p>'
        "</body></html>"
    )


def _power_box(run: Any) -> str:
    note = run.power_note()
    if not note:
        return ""
    return f'<p class="{"warn" if run.power_exceeds_budget else "ok"}">{html.escape(note)}</p>'


def plan_report_html(est: Any, run: Any, fastest: list[Any] | None = None) -> str:
    """One self-contained HTML page of a plan: run totals, step and memory breakdowns (tables
    and a plot) and, after a search, the fastest layouts."""
    status = "fits" if est.memory.fits else "DOES NOT FIT"
    body = (
        f"<p>{html.escape(est.model)} on {est.gpus:,} × {html.escape(est.hardware)} "
        f"({html.escape(est.cluster or 'no cluster')}) — <code>"
        f"{html.escape(layout_text(est.layout))}</code></p>"
        + _power_box(run)
        + "<h2>Throughput and run</h2>"
        + _table(("metric", "value"), throughput_rows(est, run))
        + f"<h2>Step time {est.step_s:,.3f} s</h2>"
        + _table(("part", "s", "%"), step_rows(est))
        + f"<h2>Memory per GPU ({status})</h2>"
        + _table(("part", "GB"), memory_rows(est))
        + f'<img alt="step and memory breakdown" src="{figure_data_uri(step_figure(est))}">'
    )
    if fastest:
        body += "<h2>Fastest layouts that fit</h2>" + _table(LAYOUT_COLUMNS, layout_rows(fastest))
    return _page(f"Plan: {est.model} on {est.cluster or est.hardware}", body)


def compare_report_html(comparison: Any) -> str:
    """One self-contained HTML page of a comparison: the side-by-side table, the scaling
    sweep (table and plot) and each cluster's step breakdown and fastest layouts."""
    body = (
        f"<p>{html.escape(comparison.model)}, {comparison.tokens:.3g} tokens, global batch "
        f"{comparison.global_batch:,} sequences.</p>"
        + "".join(_power_box(p.run) for p in comparison.plans)
        + "<h2>Side by side</h2>"
        + _table(compare_columns(comparison), compare_rows(comparison))
        + "<h2>Scaling</h2>"
        + f'<img alt="scaling" src="{figure_data_uri(scaling_figure(comparison))}">'
        + _table(SCALING_COLUMNS, scaling_rows(comparison))
    )
    for p in comparison.plans:
        body += (
            f"<h2>{html.escape(p.cluster)}: step {p.step.step_s:,.3f} s</h2>"
            + _table(("part", "s", "%"), step_rows(p.step))
            + _table(("part", "GB"), memory_rows(p.step))
            + f'<img alt="{html.escape(p.cluster)} breakdown" '
            f'src="{figure_data_uri(step_figure(p.step))}">'
            + _table(LAYOUT_COLUMNS, layout_rows(p.fastest))
        )
    names = " vs ".join(p.cluster for p in comparison.plans)
    return _page(f"Compare: {comparison.model} on {names}", body)
