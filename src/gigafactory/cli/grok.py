"""CLI verbs of the grok part: ``serve`` (the service) and ``feed`` (a load of posts)."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gigafactory.errors import GigafactoryError

console = Console()


def feed_progress() -> Progress:
    """The progress bar of a feed: ``feed ━━━ <task description> 0:00:12``."""
    return Progress(
        TextColumn("[bold]feed[/]"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    )


def serve(
    data_dir: Annotated[
        str | None,
        typer.Option(help="where the log and index live [env GROK_DATA_DIR; default grok-data]"),
    ] = None,
    host: Annotated[str | None, typer.Option(help="[env GROK_HOST; 127.0.0.1]")] = None,
    port: Annotated[int | None, typer.Option(help="[env GROK_PORT; 8000]")] = None,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key", help="accepted API key (repeatable) [env GROK_API_KEYS, comma-separated]"
        ),
    ] = None,
    commit_interval: Annotated[
        float | None, typer.Option(help="seconds between index commits [0.1]")
    ] = None,
    synchronous: Annotated[
        str | None,
        typer.Option(help="SQLite synchronous mode: FULL (fsync each batch) or NORMAL [FULL]"),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="default answer backend: offline, checkpoint or remote "
            "[env GROK_ANSWER_BACKEND; offline]"
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="gigafactory train output for backend checkpoint [env GROK_CHECKPOINT]"),
    ] = None,
    remote_url: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL, e.g. http://host:8000/v1 [GROK_REMOTE_URL]"),
    ] = None,
    remote_model: Annotated[
        str | None, typer.Option(help="model name to ask the remote server for [default]")
    ] = None,
    remote_key: Annotated[
        str | None, typer.Option(help="API key of the remote server [env GROK_REMOTE_KEY]")
    ] = None,
    remote_timeout: Annotated[
        float | None, typer.Option(help="seconds to wait for the remote server [30]")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn/log level")] = "warning",
    broker: Annotated[
        str | None,
        typer.Option(help="nats://HOST:PORT: posts go to NATS JetStream (docs/grok.md)"),
    ] = None,
    partitions: Annotated[int, typer.Option(help="with --broker: partitions of the stream")] = 2,
    replicas: Annotated[
        int, typer.Option(help="with --broker: copies of a new stream (3 in production)")
    ] = 1,
) -> None:
    """Run the Grok service: POST /v1/posts, GET /v1/search, /v1/trends,
    POST /v1/chat/completions (OpenAI-compatible), /docs."""
    import uvicorn

    from gigafactory.grok.api.app import create_app
    from gigafactory.grok.memory.service import GrokService
    from gigafactory.grok.settings import GrokSettings

    settings = GrokSettings.load(
        data_dir=data_dir,
        host=host,
        port=port,
        api_keys=tuple(api_key) if api_key else None,
        commit_interval_s=commit_interval,
        synchronous=synchronous,
        answer_backend=backend,
        checkpoint=checkpoint,
        remote_url=remote_url,
        remote_model=remote_model,
        remote_key=remote_key,
        remote_timeout_s=remote_timeout,
    )
    if not settings.api_keys:
        raise GigafactoryError("no API key: pass --api-key K or set GROK_API_KEYS=K1,K2")
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if broker is not None:
        from gigafactory.grok.memory.broker_service import BrokerService

        service = BrokerService(settings, broker, partitions, replicas)
        console.print(
            f"posts on {broker}, {service.partitions} partitions; run one `gigafactory indexer "
            f"--broker {broker} --partition K --data-dir {settings.data_dir}` per partition"
        )
    else:
        service = GrokService(settings)  # opened here, so a bad data dir is one line, exit 2
    console.print(
        f"[bold]grok[/] on http://{settings.host}:{settings.port} "
        f"(data {settings.data_dir}, answers by {settings.answer_backend}, docs at /docs)"
    )
    app = create_app(settings, service, close_service=True)
    # what start-up built (modules, schemas, the service) lives as long as the process: kept
    # out of the cyclic collector, a full collection no longer walks ~70,000 objects (55-65 ms
    # pauses of every request every few seconds at 5,000 posts/s, measured)
    gc.freeze()
    try:
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            access_log=False,
        )
    finally:
        service.close()  # idempotent: the app's shutdown closed it already


def indexer(
    broker: Annotated[str, typer.Option(help="nats://HOST:PORT of the post stream")],
    partition: Annotated[int, typer.Option(help="the partition (0..N-1) this process indexes")],
    data_dir: Annotated[Path, typer.Option(help="holds shard-K/, the index of partition K")] = Path(
        "grok-data"
    ),
    commit_interval: Annotated[float, typer.Option(help="seconds between index commits")] = 0.1,
) -> None:
    """Index one partition of the post stream into its shard and count its trends (stop with
    Ctrl-C or SIGTERM). Trend settings come from GROK_TREND_* as for serve."""
    import signal
    import threading

    from gigafactory.grok.memory.shards import run_indexer, shard_dir
    from gigafactory.grok.settings import GrokSettings

    if not 0 < commit_interval <= 10:
        raise GigafactoryError(f"--commit-interval {commit_interval}: give 0 < seconds <= 10")
    if partition < 0:
        raise GigafactoryError(f"--partition {partition}: give a partition number 0..N-1")
    settings = GrokSettings.load(data_dir=data_dir)
    halt = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: halt.set())
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(message)s")
    console.print(
        f"indexing partition {partition} of {broker} into {shard_dir(data_dir, partition)}"
    )
    opened = run_indexer(
        broker,
        partition,
        data_dir,
        halt,
        commit_interval,
        trend_bucket_s=settings.trend_bucket_s,
        trend_retention_s=settings.trend_retention_s,
        trend_save_s=settings.trend_save_s,
    )
    if opened.rebuilt:
        console.print(f"[yellow]shard rebuilt from the stream: {opened.rebuilt}[/]")
    console.print(f"indexer of partition {partition} stopped")


def feed(
    to: Annotated[str | None, typer.Option(help="service URL, e.g. http://127.0.0.1:8000")] = None,
    rate: Annotated[float, typer.Option(help="generated posts per second")] = 1000.0,
    duration: Annotated[
        float | None,
        typer.Option(help="seconds to feed (default: 60 for generated, all for replay)"),
    ] = None,
    key: Annotated[str | None, typer.Option(envvar="GROK_API_KEY", help="API key")] = None,
    replay: Annotated[Path | None, typer.Option(help="JSONL file of posts to replay")] = None,
    speed: Annotated[float, typer.Option(help="replay pace x original (0 = max)")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="generator seed (default: from clock)")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="write N=rate*duration generated posts to this JSONL file instead of sending"
        ),
    ] = None,
) -> None:
    """Stream generated posts (or replay a JSONL file) into a running service."""
    import time

    from gigafactory.grok.memory.feed import FeedClient, generated, replayed, run_feed, write_jsonl

    if rate <= 0:
        raise GigafactoryError(f"--rate {rate}: give a positive number of posts per second")
    seed = int(time.time()) % 1_000_000 if seed is None else seed
    if out is not None:
        n = write_jsonl(generated(seed, rate), out, int(rate * (duration or 60.0)))
        console.print(f"wrote {n} posts (seed {seed}) and their updates to {out}")
        return
    if not to:
        raise GigafactoryError("--to URL is required (or --out FILE to write JSONL)")
    if replay is not None:
        events, what = replayed(replay, speed), f"replay {replay} x{speed:g}"
    else:
        events, what = generated(seed, rate), f"generated, seed {seed}, {rate:g} posts/s"
        duration = 60.0 if duration is None else duration
    client = FeedClient(to, key)
    progress = feed_progress()
    try:
        with progress:
            task = progress.add_task(what, total=duration)

            def show(s) -> None:
                progress.update(
                    task,
                    completed=min(s.elapsed_s, duration or s.elapsed_s),
                    description=f"{s.accepted_posts:,} posts "
                    f"({s.posts_per_s:,.0f}/s), {s.accepted_updates:,} updates, "
                    f"{sum(s.refused.values())} refused",
                )

            stats = run_feed(events, client, duration, on_progress=show)
    finally:
        client.close()
    table = Table(title=f"feed → {to} ({what})")
    for col in (
        "posts sent",
        "accepted",
        "updates",
        "refused",
        "posts/s",
        "ack p50 ms",
        "ack p99 ms",
        "429s",
    ):
        table.add_column(col, justify="right")
    ack = sorted(stats.ack_ms) or [0.0]
    table.add_row(
        f"{stats.sent_posts:,}",
        f"{stats.accepted_posts:,}",
        f"{stats.accepted_updates:,}",
        ", ".join(f"{k} {v}" for k, v in sorted(stats.refused.items())) or "0",
        f"{stats.posts_per_s:,.0f}",
        f"{ack[len(ack) // 2]:.1f}",
        f"{ack[min(len(ack) - 1, int(len(ack) * 0.99))]:.1f}",
        str(stats.throttled),
    )
    console.print(table)


def serve_argv(data_dir: Path, port: int, api_key: str, *options: str) -> list[str]:
    """The command line that runs ``gigafactory serve`` in a child process with this
    interpreter (tests and benchmarks start real servers with it)."""
    return [
        sys.executable,
        "-c",
        "from gigafactory.cli import main; main()",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--api-key",
        api_key,
        *options,
    ]


def register(app: typer.Typer) -> None:
    """Add this part's verbs to ``app``."""
    app.command()(serve)
    app.command()(feed)
    app.command()(indexer)
