"""Shared by the benchmarks: percentiles and the result as a rich table or one JSON line."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table


def pct(xs: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``xs``; NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def emit(result: dict[str, Any], title: str, as_json: bool, console: Console) -> None:
    """Print ``result`` as one JSON object on stdout, or as a two-column metric table."""
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
    console.print(table)
