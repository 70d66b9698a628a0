"""Failures at 100k-GPU scale: interruption rates, checkpoint cadence and the goodput left."""

from gigafactory.reliability.failures import FailureModel, llama3_failure_model
from gigafactory.reliability.goodput import (
    ReliabilityResult,
    ReliabilityScenario,
    analyze,
    daly_optimal_interval_s,
    expected_goodput,
)
from gigafactory.reliability.simulate import SimulationResult, simulate

__all__ = [
    "FailureModel",
    "ReliabilityResult",
    "ReliabilityScenario",
    "SimulationResult",
    "analyze",
    "daly_optimal_interval_s",
    "expected_goodput",
    "llama3_failure_model",
    "simulate",
]
