"""CLI verbs of the grok part (registered on the main app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this part's verbs to ``app``."""
