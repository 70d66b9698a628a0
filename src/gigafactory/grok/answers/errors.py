"""Errors of the answer pipeline; the API maps them to HTTP statuses."""

from __future__ import annotations

from gigafactory.errors import GigafactoryError


class AnswerError(GigafactoryError, ValueError):
    """The request cannot be answered as asked (HTTP 4xx); the message says what to change."""

    status = 422


class UnknownModel(AnswerError):
    """The request names a model this service does not serve."""

    status = 404


class BackendError(GigafactoryError, RuntimeError):
    """The answer backend failed (HTTP 502); the message gives the reason."""

    status = 502


class BackendTimeout(BackendError):
    """The answer backend did not answer in time (HTTP 504)."""

    status = 504


class SourcesUnavailable(BackendError):
    """What the answer is drawn from cannot be read right now (trend counts loading, an
    indexer restarting): HTTP 503, retry shortly."""

    status = 503
