"""Typed errors of the trainer. Each message names the fix; the CLI prints it as one line."""

from __future__ import annotations

from gigafactory.errors import GigafactoryError


class TrainError(GigafactoryError):
    """Base class of the trainer's user-fixable errors."""


class UnsupportedModelError(TrainError, ValueError):
    """The spec asks for an architecture the trainer does not build."""


class DataError(TrainError, ValueError):
    """The training data cannot be used (no text, unknown format, too small for the batch)."""


class CheckpointError(TrainError, ValueError):
    """A checkpoint cannot be resumed (written for another spec, or for other data)."""


class TrainConfigError(TrainError, ValueError):
    """A training option has a value that cannot run (steps, batch, sequence length...)."""


class NonFiniteError(TrainError, FloatingPointError):
    """The loss or the gradient became NaN or infinite; the run stopped before saving it."""
