"""The one ``gigafactory`` command. Each verb is a thin layer over a library call; the verbs
live in one module per part (plan, train, grok) and register themselves on ``app``."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from gigafactory.cli import catalog, compare, demo, grok, plan, reliability, train
from gigafactory.errors import GigafactoryError

app = typer.Typer(
    name="gigafactory",
    help="Plan, train and serve Grok on a 100,000-GPU gigafactory of compute.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """Plan, train and serve Grok on a 100,000-GPU gigafactory of compute."""


for part in (catalog, plan, compare, reliability, train, grok, demo):
    part.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a user's mistake becomes one readable line and exit status 2."""
    try:
        app(args=argv, standalone_mode=True)
    except GigafactoryError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
