"""Goodput against cluster size: the curve that shows why 100k GPUs need fast restarts."""

from __future__ import annotations

import dataclasses

import numpy as np

from gigafactory.reliability.goodput import ReliabilityScenario, analyze


def goodput_curve(
    scenario: ReliabilityScenario, gpus: list[int] | None = None
) -> list[tuple[int, float, float]]:
    """(gpus, job MTBF hours, goodput) for a log-spaced range of cluster sizes."""
    sizes = gpus or sorted({int(x) for x in np.geomspace(1_000, 200_000, 24).round(-2)})
    out = []
    for n in sizes:
        result = analyze(dataclasses.replace(scenario, gpus=n))
        out.append((n, result.mtbf_hours, result.goodput))
    return out
