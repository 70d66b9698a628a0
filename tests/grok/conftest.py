"""Fixtures for the grok tests: a service on a temporary data dir, and post helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gigafactory.grok.memory.service import GrokService
from gigafactory.grok.settings import GrokSettings

NOW = datetime.now(UTC).replace(microsecond=0)


def post(
    pid: str, text: str, *, author: str = "alice", age_s: float = 60.0, **extra: Any
) -> dict[str, Any]:
    """A post dict created ``age_s`` seconds ago."""
    created = (NOW - timedelta(seconds=age_s)).isoformat()
    return {"id": pid, "author": author, "text": text, "created_at": created, **extra}


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., GrokService]]:
    """Open ``GrokService``s on ``tmp_path/data``; all are closed at teardown."""
    opened: list[GrokService] = []

    def make(**overrides: Any) -> GrokService:
        settings = GrokSettings.load(
            {}, data_dir=tmp_path / "data", api_keys="k1", commit_interval_s=0.05, **overrides
        )
        svc = GrokService(settings)
        opened.append(svc)
        return svc

    yield make
    for svc in opened:
        svc.close()


def ingest_and_wait(svc: GrokService, items: list[dict[str, Any]]) -> int:
    """Ingest posts and wait until they are searchable; returns the number accepted."""
    res = svc.ingest_posts(items)
    assert svc.indexer.wait_searchable(res.last_seq, 30)
    return res.accepted
