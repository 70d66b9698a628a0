"""The post stream on a real NATS JetStream (``nats-server -js`` on loopback): ``gigafactory
serve --broker`` and two ``gigafactory indexer`` processes; one indexer SIGKILLed and the
server SIGKILLed and restarted during sustained ingest; every acknowledged post is then
searchable, and counted for trends, exactly once. Two API replicas answer the same trends;
an idle partition does not stall ``searchable_seq``; a repeat past the duplicate window, a
recreated stream and a lost delivery are caught.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import tantivy

from gigafactory.grok.memory.broker import partition_of
from gigafactory.grok.memory.shards import shard_dir

from .conftest import free_port, stop, wait_for

pytestmark = [pytest.mark.scaleout, pytest.mark.slow]
KEY = {"x-api-key": "k"}
GIGAFACTORY = [sys.executable, "-c", "from gigafactory.cli import main; main()"]


def posts(batch: int, n: int) -> list[dict]:
    now = datetime.now(UTC).isoformat()
    return [
        {"id": f"b{batch}-{j}", "author": "ann", "text": f"w{batch}x{j} broker test", "created_at": now}
        for j in range(n)
    ]  # fmt: skip


class Deployment:
    """``serve --broker`` (``apis`` replicas) and one ``indexer`` per partition, as separate
    processes."""

    def __init__(self, root: Path, nats_url: str, partitions: int = 2, apis: int = 1):
        self.root, self.nats_url, self.partitions = root, nats_url, partitions
        self.data = root / "data"
        self.urls: list[str] = []
        self.servers: list[subprocess.Popen] = []
        self.indexers: dict[int, subprocess.Popen] = {}
        for i in range(apis):
            port = free_port()
            self.urls.append(f"http://127.0.0.1:{port}")
            self.servers.append(self._spawn(
                "serve", "--broker", nats_url, "--partitions", str(partitions), "--data-dir",
                str(self.data), "--port", str(port), "--api-key", "k", name=f"serve-{i}",
            ))  # fmt: skip
        self.url, self.server = self.urls[0], self.servers[0]
        for k in range(partitions):
            self.start_indexer(k)
        wait_for(self._healthy, 60, "the API and every shard", 0.2)

    def _spawn(self, *args: str, name: str) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("ab")
        env = dict(os.environ, GROK_TREND_SAVE_S="0.2")  # trend saves often: restarts replay less
        return subprocess.Popen([*GIGAFACTORY, *args], stdout=log, stderr=subprocess.STDOUT,
                                env=env)  # fmt: skip

    def start_indexer(self, k: int) -> None:
        self.indexers[k] = self._spawn(
            "indexer", "--broker", self.nats_url, "--partition", str(k), "--data-dir",
            str(self.data), "--commit-interval", "0.05", name=f"indexer-{k}",
        )  # fmt: skip

    def health(self, path: str = "/v1/status", api: int = 0) -> dict | None:
        assert self.servers[api].poll() is None, (self.root / f"serve-{api}.log").read_text()
        try:
            return httpx.get(f"{self.urls[api]}{path}", headers=KEY, timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None

    def _healthy(self) -> bool:
        return all(
            (h := self.health("/healthz", i)) is not None and h["status"] == "ok"
            for i in range(len(self.urls))
        )

    def caught_up(self) -> bool:
        """Every consumer has nothing pending or unacknowledged."""
        h = self.health()
        return h is not None and all(
            p.get("pending") == 0 and p.get("unacked") == 0 for p in h["partitions"]
        )

    def trends(self, api: int = 0, **params: str) -> httpx.Response:
        return httpx.get(f"{self.urls[api]}/v1/trends", params=params, headers=KEY, timeout=10)

    def close(self) -> None:
        for proc in [*self.indexers.values(), *self.servers]:
            stop(proc, 30)


def shard_ids(data: Path, partitions: int) -> list[Counter[str]]:
    """Per shard, how many live post documents each id has (read from the committed index)."""
    out = []
    for k in range(partitions):
        index = tantivy.Index.open(str(shard_dir(data, k)))
        index.reload()
        searcher = index.searcher()
        query = tantivy.Query.term_query(index.schema, "kind", "post")
        hits = searcher.search(query, max(1, searcher.num_docs), count=False).hits
        out.append(Counter(searcher.doc(a).get_first("id") for _s, a in hits))
    return out


@pytest.fixture
def deployment(tmp_path, nats_server):
    d = Deployment(tmp_path, nats_server.url)
    try:
        yield d
    finally:
        d.close()


def test_indexer_and_server_killed_during_ingest_keep_every_acknowledged_post_once(
    deployment, nats_server
):
    d = deployment
    acked: list[str] = []
    refused: Counter[str] = Counter()
    halt = threading.Event()
    batches = [0]

    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            send()
        except BaseException as exc:
            errors.append(exc)

    def send() -> None:
        with httpx.Client(headers=KEY, timeout=30) as c:
            while not halt.is_set():
                b = batches[0]
                items = posts(b, 50)
                batches[0] += 1
                r = c.post(f"{d.url}/v1/posts", json=items)
                assert r.status_code == 200, r.text
                out = r.json()
                no = {x["id"] for x in out["refused"]}
                refused.update(x["reason"] for x in out["refused"])
                acked.extend(p["id"] for p in items if p["id"] not in no)
                time.sleep(0.01)

    feeder = threading.Thread(target=ingest)
    feeder.start()
    try:

        def acked_at_least(n: int):
            return lambda: errors or len(acked) >= n

        wait_for(acked_at_least(1000), 60, "1,000 acknowledged posts")
        d.indexers[0].kill()  # SIGKILL: whatever it had not committed is lost from its memory
        d.indexers[0].wait(10)
        wait_for(acked_at_least(2000), 60, "2,000 acknowledged posts")
        d.start_indexer(0)
        wait_for(acked_at_least(3000), 60, "3,000 acknowledged posts")
        nats_server.kill()  # the broker dies mid-ingest ...
        time.sleep(0.5)
        nats_server.start()  # ... and comes back on the same port and store
        before = len(acked)
        wait_for(acked_at_least(before + 1000), 60, "ingest to go on after the restart")
    finally:
        halt.set()
        feeder.join(60)
    assert not feeder.is_alive() and not errors, errors
    wait_for(d.caught_up, 60, "both indexers to catch up", 0.3)
    time.sleep(0.3)  # one more commit interval for the reload

    counts = shard_ids(d.data, 2)
    for k, c in enumerate(counts):
        assert all(partition_of(pid, 2) == k for pid in c)  # each post in its partition's shard
        assert max(c.values()) == 1  # no post twice
    indexed = counts[0] + counts[1]
    missing = [pid for pid in acked if pid not in indexed]
    assert not missing, f"{len(missing)} acknowledged posts lost, e.g. {missing[:5]}"
    assert len(acked) == len(set(acked)) >= 4000
    # a post indexed without an acknowledgement: stored, but its PubAck was lost in the outage
    assert len(set(indexed) - set(acked)) <= refused["unavailable"]

    # and searchable through the API, merged over both shards
    with httpx.Client(headers=KEY, timeout=10) as c:
        for pid in (acked[0], acked[len(acked) // 2], acked[-1]):
            b, j = pid[1:].split("-")
            hits = c.get(f"{d.url}/v1/search", params={"q": f"w{b}x{j}"}).json()["hits"]
            assert [h["id"] for h in hits] == [pid]
        h = c.get(f"{d.url}/v1/status").json()
    assert h["index_docs"] == sum(indexed.values())
    # and counted for trends exactly once, across the SIGKILL (a replay from the last trend
    # save) and the broker's restart
    counts = {t["term"]: t["count"] for t in d.trends(min_count="100").json()["trends"]}
    assert counts["broker"] == sum(indexed.values())


def cli(capsys, *args: str) -> str:
    """Run ``gigafactory ARGS`` in this process; the one error line it printed (exit 2)."""
    from gigafactory.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code == 2
    return " ".join(capsys.readouterr().err.split())


def test_broker_options_with_bad_values_fail_with_the_fix(tmp_path, nats_server, capsys):
    url, data = nats_server.url, str(tmp_path / "data")
    serve = ["serve", "--api-key", "k", "--data-dir", data, "--port", str(free_port())]
    assert "write nats://HOST:PORT" in cli(capsys, *serve, "--broker", "http://127.0.0.1:1")
    dead = f"nats://127.0.0.1:{free_port()}"
    assert "cannot reach the broker" in cli(capsys, *serve, "--broker", dead)
    assert "--partitions 0: give 1 or more" in cli(
        capsys, *serve, "--broker", url, "--partitions", "0"
    )
    # one server cannot hold 3 replicas
    assert "cannot create stream" in cli(capsys, *serve, "--broker", url, "--replicas", "3")

    from gigafactory.grok.memory.broker import Broker

    b = Broker(url, "test")
    try:
        assert b.ensure_stream(2) == 2
    finally:
        b.close()
    assert "has 2 partitions, not 3; pass --partitions 2" in cli(
        capsys, *serve, "--broker", url, "--partitions", "3"
    )
    indexer = ["indexer", "--broker", url, "--data-dir", data]
    assert "--partition 2: the stream has partitions 0..1" in cli(
        capsys, *indexer, "--partition", "2"
    )
    assert "--commit-interval 0.0" in cli(
        capsys, *indexer, "--partition", "0", "--commit-interval", "0"
    )


def indexer_threads(url: str, data: Path, halt: threading.Event, partitions: int = 2):
    from gigafactory.grok.memory.shards import run_indexer

    threads = [
        threading.Thread(target=run_indexer, args=(url, k, data, halt, 0.05),
                         kwargs={"trend_save_s": 0.1})
        for k in range(partitions)
    ]  # fmt: skip
    for t in threads:
        t.start()
    return threads


def settled(svc) -> bool:
    return all(p.get("pending") == 0 and p.get("unacked") == 0 for p in svc.health()["partitions"])


def test_duplicates_updates_trends_and_status_through_the_broker(tmp_path, nats_server):
    from gigafactory.grok.memory.broker import subject_of
    from gigafactory.grok.memory.broker_service import BrokerService
    from gigafactory.grok.memory.indexer import TrendsUnavailable
    from gigafactory.grok.memory.log import post_document
    from gigafactory.grok.memory.search import SearchQuery
    from gigafactory.grok.settings import GrokSettings

    settings = GrokSettings.load({}, data_dir=tmp_path / "data", api_keys="k")
    svc = BrokerService(settings, nats_server.url, partitions=2)
    halt = threading.Event()
    threads = indexer_threads(nats_server.url, tmp_path / "data", halt)

    def broker_count() -> int:
        return svc.trend_counts(900, time.time_ns() // 1000, 6).now["broker"]

    try:
        items = posts(0, 20)
        items.append(dict(items[3]))  # repeated in the batch
        res = svc.ingest_posts(items)
        assert res.accepted == 20 and [(r.index, r.reason) for r in res.refused] == [
            (20, "duplicate")
        ]
        again = svc.ingest_posts(items[:2])  # a client retrying: the stream drops the repeat
        assert again.accepted == 0 and {r.reason for r in again.refused} == {"duplicate"}
        up = svc.ingest_updates([{"id": "b0-5", "likes": 40, "reposts": 2, "replies": 1}])
        assert up.accepted == 1 and up.last_seq > res.last_seq
        # a retry past the stream's 2-minute duplicate window: stored a second time
        created = datetime.fromisoformat(items[5]["created_at"])
        late = post_document("b0-5", "ann", items[5]["text"], created).encode()
        [ack] = svc.broker.publish([(subject_of(partition_of("b0-5", 2)), late, {})])
        assert not isinstance(ack, Exception) and not ack.duplicate
        wait_for(lambda: settled(svc), 30, "the indexers")
        time.sleep(0.1)  # the shard view reloads every 50 ms
        hits = svc.search(SearchQuery("broker test", limit=100))
        assert sorted(h.id for h in hits) == sorted(f"b0-{j}" for j in range(20))  # b0-5 once
        assert next(h for h in hits if h.id == "b0-5").likes == 40  # the first copy's counts
        status = svc.health()
        assert status["status"] == "ok" and status["index_docs"] == 20
        assert sum(p["searchable_seq"] > 0 for p in status["partitions"]) == 2
        assert "broker" in {t.term for t in svc.top_trends(900, min_count=10)}
        assert broker_count() == 20  # the repeat is not counted either
        # the Grok chat's retrieval runs unchanged on the broker service
        from gigafactory.grok.answers.question import understand_turn
        from gigafactory.grok.answers.retrieve import SearchParams, count_matches, retrieve

        assert count_matches(svc.indexer.index, ("broker",), SearchQuery()) == 20
        ctx = retrieve(svc, understand_turn("what about broker test?", time.time_ns() // 1000),
                       SearchParams())  # fmt: skip
        assert ctx.searched and ctx.posts and all(h.id.startswith("b0-") for h in ctx.posts)
        assert ctx.matched == 20
    finally:
        halt.set()
        for t in threads:
            t.join(30)
    with pytest.raises(TrendsUnavailable, match="no indexer answers for partition 0"):
        broker_count()
    # restarted indexers answer from their saved counts (nothing replayed: the saves are at
    # the shards' positions)
    halt = threading.Event()
    threads = indexer_threads(nats_server.url, tmp_path / "data", halt)
    try:
        assert wait_for(lambda: svc.broker.nc.is_connected and _counted(broker_count), 30,
                        "the restarted indexers' trends") == 20  # fmt: skip
    finally:
        halt.set()
        for t in threads:
            t.join(30)
        svc.close()


def _counted(count) -> int | None:
    """``count()``, or None while an indexer is not answering yet."""
    from gigafactory.grok.memory.indexer import TrendsUnavailable

    try:
        return count()
    except TrendsUnavailable:
        return None


def test_trends_agree_on_two_api_replicas_and_an_idle_partition_does_not_stall(
    tmp_path, nats_server
):
    d = Deployment(tmp_path, nats_server.url, apis=2)
    try:
        now = datetime.now(UTC).isoformat()

        def ingest(api: int, ids: list[str], text: str) -> int:
            items = [{"id": i, "author": "ann", "text": text, "created_at": now} for i in ids]
            r = httpx.post(f"{d.urls[api]}/v1/posts", json=items, headers=KEY, timeout=30)
            assert r.status_code == 200 and r.json()["accepted"] == len(ids), r.text
            return r.json()["last_seq"]

        ingest(0, [f"a{j}" for j in range(30)], "#alpha rising today")
        ingest(1, [f"b{j}" for j in range(20)], "#alpha and #beta rising")
        # a batch all on partition 0: partition 1 stays idle, searchable_seq must still reach it
        only0 = [i for i in (f"c{j}" for j in range(100)) if partition_of(i, 2) == 0][:10]
        last = ingest(1, only0, "#gamma rising")

        def searchable() -> int:
            return (d.health() or {}).get("searchable_seq", 0)

        wait_for(lambda: searchable() >= last, 30, "searchable_seq to reach the last batch")

        def counts(api: int) -> dict[str, int]:
            r = d.trends(api, min_count="5")
            assert r.status_code == 200, r.text
            return {t["term"]: t["count"] for t in r.json()["trends"]}

        want = {"rising": 60, "#alpha": 50, "#beta": 20, "#gamma": 10, "today": 30}
        assert counts(0) == want and counts(1) == want  # whichever replica published them
        assert [t["term"] for t in d.trends(0).json()["trends"]] == [
            t["term"] for t in d.trends(1).json()["trends"]
        ]
        # SIGKILL an indexer after its trend save, publish on, restart it: counted once
        saved = shard_dir(d.data, 0) / "trends" / "state.json"
        wait_for(saved.exists, 10, "partition 0's trend save")
        d.indexers[0].kill()
        d.indexers[0].wait(10)
        r = d.trends(1)
        assert r.status_code == 503 and "partition 0" in r.json()["detail"]
        ingest(1, [f"d{j}" for j in range(10)], "#alpha again")
        d.start_indexer(0)
        wait_for(lambda: d.trends(0).status_code == 200 and d.caught_up(), 30, "indexer 0")
        want["#alpha"] = 60
        assert counts(0)["#alpha"] == 60 and counts(1)["#alpha"] == 60
    finally:
        d.close()


def test_an_indexer_refuses_a_recreated_stream(tmp_path, nats_server, capsys):
    from gigafactory.grok.memory.broker import STREAM, Broker
    from gigafactory.grok.memory.broker_service import BrokerService
    from gigafactory.grok.settings import GrokSettings

    settings = GrokSettings.load({}, data_dir=tmp_path / "data", api_keys="k")
    svc = BrokerService(settings, nats_server.url, partitions=1)
    halt = threading.Event()
    threads = indexer_threads(nats_server.url, tmp_path / "data", halt, partitions=1)
    try:
        assert svc.ingest_posts(posts(0, 5)).accepted == 5
        wait_for(lambda: svc.health()["searchable_seq"] == 5, 30, "the indexer")
    finally:
        halt.set()
        threads[0].join(30)
        svc.close()
    b = Broker(nats_server.url, "admin")
    try:  # the stream is deleted and created again: sequences start over
        b.run(b.js.delete_stream(STREAM), 10)
        b.ensure_stream(1)
    finally:
        b.close()
    err = cli(capsys, "indexer", "--broker", nats_server.url, "--partition", "0",
              "--data-dir", str(tmp_path / "data"))  # fmt: skip
    assert "deleted and recreated" in err and f"Move {shard_dir(tmp_path / 'data', 0)}" in err


def test_a_delivery_that_never_arrives_is_detected(tmp_path, nats_server):
    from gigafactory.grok.memory.broker import Broker, subject_of
    from gigafactory.grok.memory.log import post_document
    from gigafactory.grok.memory.shards import (
        ShardFeeder,
        _bind_consumer,
        caught_up_to,
        in_order,
        open_shard,
    )  # fmt: skip

    b = Broker(nats_server.url, "test")
    feeder = None
    try:
        b.ensure_stream(1)
        now = datetime.now(UTC)
        bodies = [post_document(f"p{j}", "ann", "lost and found", now).encode() for j in range(3)]
        acks = b.publish([(subject_of(0), body, {}) for body in bodies])
        assert [a.seq for a in acks] == [1, 2, 3]
        feeder = ShardFeeder(open_shard(tmp_path / "s"), 16_000_000)

        async def scenario():
            sub = await _bind_consumer(b, 0, feeder, 30.0)
            lost = await sub.fetch(1, timeout=5)  # delivered by the server, never taken
            assert await caught_up_to(b, 0, 0) is None  # the consumer delivered 1, we took 0
            rest = await sub.fetch(10, timeout=5)
            assert in_order(rest, 0) == ([], True)  # delivery 2 follows no delivery 1
            assert in_order([*lost, *rest], 0) == ([*lost, *rest], False)
            assert await caught_up_to(b, 0, 3) == 3  # all delivered: the stream's end

        b.run(scenario(), 30)
    finally:
        if feeder is not None:
            feeder.close()
        b.close()
