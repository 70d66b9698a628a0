"""The post stream on NATS JetStream: one stream, N partition subjects, a hash of the post id
choosing the partition.

``gigafactory serve --broker nats://HOST:PORT`` publishes every accepted post (and engagement
update) to ``grok.posts.<k>`` with ``k = crc32(id) mod N`` and answers a batch only after
JetStream has acknowledged each publish (a ``PubAck``: the message is stored, on R of the
stream's replicas). The stream ``GROK_POSTS`` holds the N subjects; N is read back from the
stream, so the partition count lives in one place. Each publish carries ``Nats-Msg-Id: <id>``
(``upd:<id>:<at>`` for updates), so a client retrying a batch within the stream's duplicate
window (``DUPLICATE_WINDOW_S``) gets ``duplicate`` instead of a second copy.

``gigafactory indexer --partition K`` (``shards.run_indexer``) consumes one subject and answers
trend requests on ``grok.trends.K`` (NATS request/reply, ``request_each``).

The NATS client (``nats-py``) is asyncio; ``Broker`` runs one connection on a private event
loop thread so the synchronous service and indexer code can call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import zlib
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.js.api import StorageType, StreamConfig, StreamInfo

from gigafactory.errors import GigafactoryError

STREAM = "GROK_POSTS"
SUBJECT_PREFIX = "grok.posts"
DUPLICATE_WINDOW_S = 120.0
PUBLISH_TIMEOUT_S = 5.0
KIND_HEADER = "Grok-Kind"

T = TypeVar("T")
log = logging.getLogger(__name__)

# what a publish or a fetch can raise while the server is away or restarting
TRANSIENT = (
    nats.errors.Error,
    nats.js.errors.Error,
    asyncio.TimeoutError,
    OSError,
)


class BrokerError(GigafactoryError):
    """The broker cannot be reached or its stream does not fit this deployment."""


def partition_of(post_id: str, partitions: int) -> int:
    """The partition of a post: CRC-32 of its id (UTF-8) modulo the partition count. Stable
    across processes and machines (unlike Python's salted ``hash``)."""
    return zlib.crc32(post_id.encode()) % partitions


def subject_of(partition: int) -> str:
    """The stream subject of one partition."""
    return f"{SUBJECT_PREFIX}.{partition}"


def partitions_of(info: StreamInfo) -> int:
    """The partition count of a stream (its number of subjects)."""
    return len(info.config.subjects or [])


def check_url(url: str) -> str:
    """``url`` if it is ``nats://HOST:PORT`` (comma-separate several servers)."""
    for one in url.split(","):
        parts = urlsplit(one.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if parts.scheme != "nats" or not parts.hostname or port is None:
            raise BrokerError(
                f"--broker {url!r}: write nats://HOST:PORT (e.g. nats://127.0.0.1:4222), "
                "comma-separated for several servers"
            )
    return url


def _accepts(url: str, timeout_s: float) -> bool:
    """Whether a TCP connection to one ``nats://HOST:PORT`` opens (a fast, clear error at
    start: the client itself would retry an unreachable server for ever)."""
    parts = urlsplit(url.strip())
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s):
            return True
    except OSError:
        return False


class Broker:
    """One NATS connection (reconnecting for ever) on a private event loop thread."""

    def __init__(self, url: str, name: str, connect_timeout_s: float = 5.0):
        self.url = check_url(url)
        if not any(_accepts(u, connect_timeout_s) for u in url.split(",")):
            raise BrokerError(
                f"cannot reach the broker at {url} (connection refused or timed out); start "
                "`nats-server -js` there or fix --broker"
            )
        self.reconnects = 0  # connections re-established after a loss (a server restart)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()
        try:
            self.nc = self.run(
                nats.connect(
                    [u.strip() for u in url.split(",")],
                    name=name,
                    connect_timeout=connect_timeout_s,
                    reconnect_time_wait=0.2,
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                    reconnected_cb=self._on_reconnect,
                ),
                connect_timeout_s * 3,
            )
        except Exception as exc:
            self._stop_loop()
            raise BrokerError(
                f"cannot reach the broker at {url} ({type(exc).__name__}: {exc}); start "
                "`nats-server -js` there or fix --broker"
            ) from None
        self.js = self.nc.jetstream(timeout=PUBLISH_TIMEOUT_S)

    async def _on_reconnect(self) -> None:
        self.reconnects += 1

    async def _on_error(self, exc: Exception) -> None:
        """The client's errors while it reconnects: one log line each, no traceback."""
        log.warning("broker %s: %s: %s", self.url, type(exc).__name__, exc)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the connection's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stream_info(self) -> StreamInfo:
        """The stream's configuration and state (``BrokerError`` when there is none)."""
        try:
            return self.run(self.js.stream_info(STREAM), PUBLISH_TIMEOUT_S * 2)
        except nats.js.errors.NotFoundError:
            raise BrokerError(
                f"no stream {STREAM} on {self.url}; start `gigafactory serve --broker "
                f"{self.url}` first (it creates the stream)"
            ) from None

    def ensure_stream(self, partitions: int, replicas: int = 1) -> int:
        """Create the stream with ``partitions`` subjects and ``replicas`` copies, or check
        that the existing one has that many partitions. Returns the partition count."""
        if partitions < 1:
            raise BrokerError(f"--partitions {partitions}: give 1 or more")
        config = StreamConfig(
            name=STREAM,
            subjects=[subject_of(k) for k in range(partitions)],
            storage=StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
        )

        async def ensure() -> int:
            try:
                si = await self.js.stream_info(STREAM)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(config)
                return partitions
            return partitions_of(si)

        try:
            have = self.run(ensure(), PUBLISH_TIMEOUT_S * 2)
        except nats.js.errors.APIError as exc:
            raise BrokerError(
                f"cannot create stream {STREAM} on {self.url}: {exc.description}; "
                "is JetStream enabled (nats-server -js)?"
            ) from None
        if have != partitions:
            raise BrokerError(
                f"stream {STREAM} on {self.url} has {have} partitions, not {partitions}; "
                f"pass --partitions {have} (repartitioning needs a new stream)"
            )
        return have

    def publish(
        self, messages: list[tuple[str, bytes, dict[str, str]]]
    ) -> list[nats.js.api.PubAck | Exception]:
        """Publish ``(subject, payload, headers)`` messages concurrently; each result is the
        JetStream ``PubAck`` or the exception that stands in for it (not stored, or not known
        to be stored: the caller must not acknowledge that message)."""

        async def all_of() -> list[Any]:
            return await asyncio.gather(
                *(self.js.publish(s, p, headers=h) for s, p, h in messages),
                return_exceptions=True,
            )

        return self.run(all_of(), PUBLISH_TIMEOUT_S * 4)

    def request_each(
        self, subjects: list[str], payload: bytes, timeout_s: float
    ) -> list[bytes | Exception]:
        """Send ``payload`` as a request to each subject at once; each result is the reply's
        data, or the exception that stands in for it (``NoRespondersError`` when nothing
        listens there, ``TimeoutError`` after ``timeout_s``)."""

        async def all_of() -> list[Any]:
            return await asyncio.gather(
                *(self.nc.request(s, payload, timeout=timeout_s) for s in subjects),
                return_exceptions=True,
            )

        replies = self.run(all_of(), timeout_s + PUBLISH_TIMEOUT_S)
        return [r if isinstance(r, BaseException) else r.data for r in replies]

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def close(self) -> None:
        """Flush and close the connection, then stop the loop thread (idempotent)."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):  # closing a connection whose server is gone
            self.run(self.nc.close(), 10)
        self._stop_loop()
