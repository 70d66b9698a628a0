"""Fit an accelerator's kernel efficiencies to published runs.

The calibration is per accelerator and per kernel kind: a handful of numbers in the
accelerator's YAML ``efficiency`` block, fitted once over every published row on that
accelerator, never per row. The fit minimises the sum of absolute log errors (robust to
one odd row) by coordinate descent over a grid of fractions of peak.

No constant is fitted to too few rows: a family's block is fitted only where its rows
outnumber the constants (``enough_rows``); otherwise every kind keeps its documented prior
(``compute.DEFAULT_EFFICIENCY``). The rule holds wherever a block is fitted: the catalog
fit (``fit_families``), each leave-one-source-out fold (``fold_hardware``) and a user's own
``fit_efficiency``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path

from gigafactory.plan.compute import prior_hardware, software_for
from gigafactory.plan.runs import PublishedRun, read_runs
from gigafactory.plan.validate import (
    RowResult,
    ValidationReport,
    compare_run,
    out_of_scope,
    summarise,
)
from gigafactory.spec.hardware import HardwareSpec

#: The kinds a fit may set, and the grid it searches (fractions of peak or bandwidth).
FIT_KINDS = ("matmul", "attention", "memory")
#: Physical bounds per kind: below them a kernel would be broken, above them no measured
#: kernel of that kind has reached (dense GEMMs ~0.9 of peak on large shapes).
BOUNDS = {
    "matmul": (0.5, 0.9),
    "attention": (0.3, 0.8),
    "memory": (0.5, 0.9),
}
STEP = 0.025


def grid(kind: str) -> list[float]:
    """The values a fit tries for ``kind``: its bounds in steps of 0.025."""
    lo, hi = BOUNDS[kind]
    n = round((hi - lo) / STEP)
    return [round(lo + i * STEP, 3) for i in range(n + 1)]


def relevant_kinds(runs: Sequence[PublishedRun]) -> list[str]:
    """Only kinds the rows can inform: fused attention needs rows of a stack with flash
    attention. fp8 and grouped (expert) GEMMs share the matmul value
    (``compute.efficiency``)."""
    kinds = ["matmul", "memory"]
    if any(software_for(r.row.get("framework", "") or "").flash_attention for r in runs):
        kinds.insert(1, "attention")
    return kinds


#: Accelerators of one architecture share their kernel efficiencies: the same tensor cores,
#: kernels and libraries, only clocks, memory and interconnect differ (those are in the data
#: sheet numbers already).
FAMILIES = {
    "a100-80gb": "ampere",
    "h100-sxm": "hopper",
    "h200": "hopper",
    "h800": "hopper",
    "b200": "blackwell",
    "gb200": "blackwell",
}


def family(name: str) -> str:
    """The architecture family of an accelerator preset (itself when unknown)."""
    return FAMILIES.get(name, name)


def loss(hardware: dict[str, HardwareSpec], runs: Sequence[PublishedRun]) -> float:
    """Sum over rows of |log(predicted / published)|, each row on ``hardware[row.gpu]``."""
    total = 0.0
    for run in runs:
        r = compare_run(run, hardware[run.gpu])
        total += abs(math.log(max(1e-9, r.predicted) / r.published))
    return total


def enough_rows(runs: Sequence[PublishedRun], kinds: Sequence[str]) -> bool:
    """Whether ``runs`` may calibrate ``kinds``: more rows than constants. k constants fitted
    to k or fewer rows reproduce those rows whatever the kernels do, so they say nothing
    about a row the fit has not seen: with the Narayanan et al. rows left out, BLOOM's one
    row set both Ampere numbers and put those ten rows 6–22% low."""
    return len(runs) > len(kinds)


def fit_efficiency(
    hardware: Sequence[HardwareSpec], runs: Sequence[PublishedRun], sweeps: int = 3
) -> dict[str, float]:
    """One efficiency block fitted to ``runs`` on the accelerators ``hardware`` (one family);
    rows outside the planner's scope are left out. Empty when the in-scope rows are too few
    for the kinds they inform (``enough_rows``): every kind then keeps its documented prior
    (``compute.DEFAULT_EFFICIENCY``)."""
    runs = [r for r in runs if not out_of_scope(r)]
    kinds = relevant_kinds(runs)
    if not enough_rows(runs, kinds):
        return {}
    eff = dict(hardware[0].efficiency)

    def with_eff(e: dict[str, float]) -> dict[str, HardwareSpec]:
        return {h.name: dataclasses.replace(h, efficiency={**h.efficiency, **e}) for h in hardware}

    for _ in range(sweeps):
        for kind in kinds:
            best = (math.inf, eff.get(kind))
            for value in grid(kind):
                score = loss(with_eff({**eff, kind: value}), runs)
                if score < best[0]:
                    best = (score, value)
            if best[1] is not None:
                eff[kind] = best[1]
    return {k: eff[k] for k in kinds}


def fit_families(runs: Sequence[PublishedRun]) -> dict[str, dict[str, float]]:
    """Efficiency blocks per family, each fitted to that family's rows (empty, i.e. the
    documented priors, for a family with too few rows: ``enough_rows``)."""
    from gigafactory.spec.catalog import load_hardware

    groups: dict[str, list[PublishedRun]] = {}
    for run in runs:
        groups.setdefault(family(run.gpu), []).append(run)
    out = {}
    for fam, rows in groups.items():
        hw = [load_hardware(name) for name in sorted({r.gpu for r in rows})]
        out[fam] = fit_efficiency(hw, rows)
    return out


def source_of(run: PublishedRun) -> str:
    """The publication a row comes from (its ``source`` column; the row id when blank)."""
    return (run.row.get("source") or "").strip() or run.id


def fold_hardware(train: Sequence[PublishedRun], gpus: Sequence[str]) -> dict[str, HardwareSpec]:
    """The accelerators ``gpus`` calibrated on ``train`` alone, starting from the priors.

    A family gets a block fitted to its own rows in ``train`` where they outnumber the
    constants (``fit_efficiency``). A family with fewer (none, as Hopper has when its only
    packaged source is left out; one, as Ampere has when only BLOOM is left) keeps the
    documented priors (``compute.DEFAULT_EFFICIENCY``): rows of other architectures do not
    say what this one's kernels reach (the fitted fractions of peak differ by family), and
    the rows of its own are too few to say it.
    """
    from gigafactory.spec.catalog import load_hardware

    train = [r for r in train if not out_of_scope(r)]
    bare = {n: prior_hardware(load_hardware(n)) for n in {r.gpu for r in train} | set(gpus)}
    groups: dict[str, list[PublishedRun]] = {}
    for run in train:
        groups.setdefault(family(run.gpu), []).append(run)
    out = {}
    for name in gpus:
        rows = groups.get(family(name), [])
        members = [bare[g] for g in sorted({r.gpu for r in rows})]
        eff = fit_efficiency(members, rows)  # {} for too few rows (none included)
        out[name] = dataclasses.replace(bare[name], efficiency={**bare[name].efficiency, **eff})
    return out


def leave_one_source_out(
    runs: Sequence[PublishedRun], targets: Sequence[PublishedRun] | None = None
) -> list[RowResult]:
    """Out-of-sample predictions: for each source, refit every efficiency on the in-scope
    rows of the other sources (``fold_hardware``) and predict that source's rows.

    ``targets`` are the rows to predict (default ``runs``); a target whose source has no row
    in ``runs`` is predicted from a fit on all of ``runs``. Results keep the targets' order.
    """
    targets = list(runs if targets is None else targets)
    gpus = sorted({t.gpu for t in targets})
    folds: dict[tuple[str, ...], dict[str, HardwareSpec]] = {}  # same training rows, one fit
    out: dict[int, RowResult] = {}
    for src in dict.fromkeys(source_of(t) for t in targets):
        train = [r for r in runs if source_of(r) != src]
        key = tuple(r.id for r in train)
        if key not in folds:
            folds[key] = fold_hardware(train, gpus)
        for i, t in enumerate(targets):
            if source_of(t) == src:
                out[i] = compare_run(t, folds[key][t.gpu])
    return [out[i] for i in range(len(targets))]


def out_of_sample(path: str | Path | None = None) -> ValidationReport:
    """See ``_out_of_sample``; computed once per file and process (the folds refit)."""
    return _out_of_sample(str(path) if path is not None else "")


@functools.lru_cache(maxsize=8)
def _out_of_sample(path: str) -> ValidationReport:
    """Leave-one-source-out predictions of every row of ``path`` (default: the packaged
    set), calibrated on the packaged rows of the other sources. Rows whose source is not in
    the packaged set (a user's own runs, ``data/published_runs_holdout.csv``) are predicted
    from a fit on every packaged row: the calibration never saw them either way."""
    return summarise(leave_one_source_out(read_runs(), read_runs(path or None)))
