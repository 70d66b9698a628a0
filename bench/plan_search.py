"""Benchmark: layouts per second of the planner's search, and one ``validate()`` pass.

Cases: Grok-1 on the 100,000-GPU Colossus (bf16; bf16 and fp8 searched, as ``gigafactory
plan`` does; and with the global batch free in 4096:6250), GPT-3 175B on 4,096 A100 with
a 1,536-sequence batch (Calculon's case), the search of every published run's model on its
own GPU count, and the scalar model one layout at a time (what the search would cost
without vectorising). "evaluated" counts every layout of the space; "bounded" those ruled
out by their compute time alone; "timed" those that fit and were timed in full.

    .venv/bin/python bench/plan_search.py [--json]
"""

from __future__ import annotations

import json
import os
import sys
import time

from rich.console import Console
from rich.table import Table

from gigafactory.plan.runs import read_runs
from gigafactory.plan.search import enumerate_degrees, search_layouts
from gigafactory.plan.step import estimate_step
from gigafactory.plan.validate import generic_cluster, validate
from gigafactory.spec import LayoutSpec, load_cluster, load_hardware, load_model

SCALAR_SAMPLE = 300


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _row(case: str, res, secs: float) -> dict:
    return {
        "case": case,
        "evaluated": res.evaluated,
        "bounded": res.bounded,
        "timed": res.fitting,
        "seconds": round(secs, 3),
        "layouts_per_s": round(res.evaluated / secs),
    }


def _scalar_rate() -> dict:
    """The scalar path: ``estimate_step`` on one ``LayoutSpec`` at a time."""
    grok, c = load_model("grok-1"), load_cluster("colossus")
    h = load_hardware(c.gpu)
    degrees = enumerate_degrees(grok, h, c, c.gpus, [4096], grok.seq_len)
    keys = list(degrees)
    step = len(degrees["tp"]) // SCALAR_SAMPLE
    layouts = [
        LayoutSpec(**{k: int(degrees[k][i]) for k in keys})
        for i in range(0, step * SCALAR_SAMPLE, step)
    ]
    _, secs = _timed(lambda: [estimate_step(grok, lay, h, c, check=False) for lay in layouts])
    return {"case": f"scalar estimate_step, {len(layouts)} grok-1 layouts", "evaluated":
            len(layouts), "bounded": 0, "timed": len(layouts), "seconds": round(secs, 3),
            "layouts_per_s": round(len(layouts) / secs)}  # fmt: skip


def main() -> None:
    rows = []
    c = load_cluster("colossus")
    h = load_hardware(c.gpu)
    grok = load_model("grok-1")
    for label, kw in (
        ("bf16", {"precision": "bf16"}),
        ("bf16+fp8", {"precision": None}),
        ("bf16+fp8, batch 4096:6250", {"precision": None, "batch_range": (4096, 6250)}),
    ):
        res, secs = _timed(lambda kw=kw: search_layouts(grok, h, c, **kw))
        rows.append(_row(f"grok-1 on ≤100,000 × h100, {label}", res, secs))
    a100 = load_hardware("a100-80gb")
    gpt3 = load_model("gpt3-175b")
    res, secs = _timed(
        lambda: search_layouts(gpt3, a100, generic_cluster(a100, 4096), 4096, 1536, "bf16")
    )
    rows.append(_row("gpt3-175b on ≤4,096 × a100, batch 1536", res, secs))
    total = 0.0
    agg = {"evaluated": 0, "bounded": 0, "fitting": 0}
    for run in read_runs():
        hw = load_hardware(run.gpu)
        lay = run.layout()
        res, secs = _timed(
            lambda run=run, hw=hw, lay=lay: search_layouts(
                run.model(), hw, generic_cluster(hw, run.gpus), run.gpus, lay.global_batch,
                lay.precision, seq_len=run.model().seq_len,
            )
        )  # fmt: skip
        total += secs
        for k in agg:
            agg[k] += getattr(res, k)
    rows.append({"case": f"published runs' models ({len(read_runs())} searches)",
                 "evaluated": agg["evaluated"], "bounded": agg["bounded"],
                 "timed": agg["fitting"], "seconds": round(total, 3),
                 "layouts_per_s": round(agg["evaluated"] / total)})  # fmt: skip
    rows.append(_scalar_rate())
    _, secs = _timed(validate)
    load = os.getloadavg()[0]
    if "--json" in sys.argv:
        print(json.dumps({"rows": rows, "validate_s": round(secs, 3), "load_1min": load}))
        return
    table = Table(title=f"planner search speed (load average {load:.1f})")
    for col in ("case", "evaluated", "bounded", "timed", "seconds", "layouts/s"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for r in rows:
        table.add_row(r["case"], f"{r['evaluated']:,}", f"{r['bounded']:,}", f"{r['timed']:,}",
                      f"{r['seconds']:.2f}", f"{r['layouts_per_s']:,}")  # fmt: skip
    console = Console(width=120)
    console.print(table)
    console.print(f"validate() over the packaged runs: {secs:.2f} s")


if __name__ == "__main__":
    main()
