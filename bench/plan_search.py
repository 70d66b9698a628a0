"""Benchmark: how long the planner takes to search layouts and to validate.

Times ``search_layouts`` for Grok-1 on the 100,000-GPU Colossus and for the layout-search of
each published run's model on its own GPU count, plus one full ``validate()`` pass.

    .venv/bin/python bench/plan_search.py [--json]
"""

from __future__ import annotations

import json
import sys
import time

from rich.console import Console
from rich.table import Table

from gigafactory.plan.runs import read_runs
from gigafactory.plan.search import search_layouts
from gigafactory.plan.validate import generic_cluster, validate
from gigafactory.spec import load_cluster, load_hardware, load_model


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    rows = []
    c = load_cluster("colossus")
    h = load_hardware(c.gpu)
    res, secs = _timed(lambda: search_layouts(load_model("grok-1"), h, c))
    rows.append(("grok-1 on colossus (100,000 × h100)", res.considered, res.fitting, secs))
    total = 0.0
    considered = fitting = 0
    for run in read_runs():
        hw = load_hardware(run.gpu)
        cl = generic_cluster(hw, run.gpus)
        res, secs = _timed(
            lambda run=run, hw=hw, cl=cl: search_layouts(
                run.model(), hw, cl, run.gpus, run.layout().global_batch, run.layout().precision
            )
        )
        total += secs
        considered += res.considered
        fitting += res.fitting
    rows.append(
        (f"published runs' models ({len(read_runs())} searches)", considered, fitting, total)
    )
    _, secs = _timed(validate)
    rows.append(("validate() over the packaged runs", len(read_runs()), None, secs))
    if "--json" in sys.argv:
        keys = ("case", "layouts_considered", "layouts_fitting", "seconds")
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows]))
        return
    table = Table(title="planner search and validation time")
    for col in ("case", "layouts considered", "fitting", "seconds"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for case, n, f, s in rows:
        table.add_row(case, f"{n:,}", "-" if f is None else f"{f:,}", f"{s:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
