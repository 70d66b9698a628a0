"""CLI verb ``demo``: the whole system in under two minutes (``make run``). Renders the
events of ``gigafactory.grok.demo.Demo``."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()


def _trends_table(ev: Any) -> Table:
    t = Table(title=f"trending now (last {ev.window_s / 60:g} min of posts)")
    for col in ("term", "posts", "× usual"):
        t.add_column(col, justify="left" if col == "term" else "right")
    for x in ev.terms:
        t.add_row(Text(x["term"]), f"{x['count']:,}", f"{x['ratio']:g}")
    return t


def _age_s(created_at: str) -> float:
    return (
        datetime.now(UTC) - datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    ).total_seconds()


def _citations_table(ev: Any) -> Table:
    t = Table(show_header=True, box=None, padding=(0, 1), expand=True)
    t.add_column("", style="bold cyan", no_wrap=True)
    t.add_column("author", no_wrap=True)
    t.add_column("posted", justify="right", no_wrap=True)
    t.add_column("acked→cited", justify="right", no_wrap=True)
    t.add_column("text", ratio=1, overflow="ellipsis", no_wrap=True)
    for n, (c, ack) in enumerate(zip(ev.citations, ev.ack_to_cited_s, strict=True), 1):
        t.add_row(
            Text(f"[{n}]"),
            Text("@" + str(c.get("author", "?"))),
            f"{_age_s(c['created_at']):.1f} s ago" if c.get("created_at") else "?",
            "-" if ack is None else f"{ack:.1f} s",
            Text(" ".join(str(c.get("text", "")).split())),
        )
    return t


def _render_answer(ev: Any) -> None:
    console.print()
    if ev.citations:
        console.print(_citations_table(ev))
    fresh = ev.freshest_s
    freshness = (
        f"freshest cited post acknowledged {fresh:.1f} s before it was cited"
        if fresh is not None
        else "no cited post from this feed"
    )
    console.print(
        f"[dim]first token {ev.first_token_ms:.0f} ms · answer {ev.total_ms:.0f} ms · "
        f"{len(ev.citations)} citations · {freshness}[/]"
    )


def demo(
    rate: Annotated[float, typer.Option(help="generated posts per second streamed in")] = 500.0,
    history: Annotated[
        float, typer.Option(help="seconds of past posts sent first (the trends' baseline)")
    ] = 180.0,
    warmup: Annotated[
        float, typer.Option(help="seconds of live posts before the first question")
    ] = 10.0,
    questions: Annotated[
        int, typer.Option(help="at most this many trending topics to ask Grok about (1-10)")
    ] = 3,
    seed: Annotated[int, typer.Option(help="post generator seed")] = 0,
    port: Annotated[int, typer.Option(help="port on 127.0.0.1 (0 = any free port)")] = 0,
    serve: Annotated[
        bool,
        typer.Option("--serve", help="keep the service, the feed and the page up until Ctrl-C"),
    ] = False,
) -> None:
    """The whole system in one go: start Grok's service on a temporary data directory, stream
    posts into it, ask Grok what is trending and show its cited answers, then plan the
    100,000-GPU run that would train it."""
    from gigafactory.cli.grok import feed_progress
    from gigafactory.cli.plan import _render_step
    from gigafactory.grok.demo import (
        Answered,
        AnswerPiece,
        Asking,
        Demo,
        DemoOptions,
        Feeding,
        Planned,
        ServiceUp,
        Trending,
    )

    options = DemoOptions(
        rate=rate, history_s=history, warmup_s=warmup, questions=questions, seed=seed, port=port
    )
    t0 = time.perf_counter()
    progress = feed_progress()
    with Demo(options) as d, progress:
        task = progress.add_task(
            "starting", total=options.history_s + options.warmup_s, visible=False
        )
        for ev in d.run():
            if isinstance(ev, ServiceUp):
                console.print(
                    f"[bold]1. Grok's service[/] up at {ev.url} in {ev.startup_s:.1f} s "
                    f"(data in {ev.data_dir}, removed at the end)"
                )
                console.print(
                    f"[bold]2. streaming generated posts[/]: the last {history:g} s of the "
                    f"stream at once, then {rate:g} posts/s live for {warmup:g} s"
                )
                progress.update(task, visible=True)
            elif isinstance(ev, Feeding):
                phase = "live" if ev.live else f"sending the last {ev.history_s:g} s"
                if ev.index_lag:
                    phase = f"indexing the last {ev.index_lag:,} records"
                progress.update(
                    task,
                    completed=min(ev.stream_s, ev.target_s),
                    description=f"{phase}: {ev.posts:,} posts acknowledged "
                    f"({ev.posts_per_s:,.0f}/s)",
                )
            elif isinstance(ev, Trending):
                progress.stop()
                console.print(_trends_table(ev))
                console.print("[bold]3. asking Grok[/] about what is trending")
            elif isinstance(ev, Asking):
                console.print(f"\n[bold cyan]?[/] [bold]{ev.question}[/]  [dim]({ev.model})[/]")
            elif isinstance(ev, AnswerPiece):
                console.print(ev.text, end="", markup=False, highlight=False)
            elif isinstance(ev, Answered):
                _render_answer(ev)
            elif isinstance(ev, Planned):
                console.print(
                    f"\n[bold]4. the run that would train Grok[/] (planned in {ev.took_s:.1f} s)"
                )
                _render_step(ev.step, ev.run)
        s = d.feed_stats
        console.print(
            f"\ndemo done in {time.perf_counter() - t0:.1f} s: {s.accepted_posts:,} posts "
            f"ingested at {s.posts_per_s:,.0f}/s"
        )
        if serve:
            console.print(
                f"[bold green]page:[/] {d.url}/#key={d.key}&window={options.trend_window}  "
                f"(API key {d.key}; posts keep streaming; Ctrl-C to stop)"
            )
            _serve_until_stopped(d)


def _stop(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _serve_until_stopped(d: Any) -> None:
    """Keep the demo up until Ctrl-C or SIGTERM (both end it cleanly: the service stops and
    the temporary data directory is removed). Both are caught explicitly: a process started
    in the background by a non-interactive shell inherits SIGINT ignored."""
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            time.sleep(1)
            d.check()
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to ``app``."""
    app.command()(demo)
