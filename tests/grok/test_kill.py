"""The real thing: a server process SIGKILLed during sustained ingest takes its indexer process
with it, loses no acknowledged post and duplicates none after it restarts."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from gigafactory.cli.grok import serve_argv

from .conftest import post
from .test_indexer_process import _gone, _wait_until

KEY = {"x-api-key": "k"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path, port: int, log: Path, **popen) -> subprocess.Popen:
    cmd = serve_argv(data, port, "k", "--commit-interval", "0.05")
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, **popen)


def _healthy(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, "server exited"
        try:
            h = httpx.get(f"{url}/v1/status", headers=KEY, timeout=2).json()
            if h["lag"] == 0:
                return h
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError("server not healthy in time")


@pytest.mark.slow
def test_sigkill_during_ingest_keeps_every_acknowledged_post_once(tmp_path):
    data, port, log = tmp_path / "data", _free_port(), tmp_path / "server.log"
    url = f"http://127.0.0.1:{port}"
    proc = _start(data, port, log)
    acked: list[str] = []
    stop = threading.Event()

    def ingest() -> None:
        with httpx.Client(headers=KEY, timeout=10) as c:
            b = 0
            while not stop.is_set():
                items = [post(f"k{b}-{j}", f"u{b}x{j} kill test", age_s=1) for j in range(100)]
                try:
                    r = c.post(f"{url}/v1/posts", json=items)
                except httpx.HTTPError:
                    return  # the server died with this batch in flight: not acknowledged
                assert r.status_code == 200, r.text
                refused = {x["index"] for x in r.json()["refused"]}
                assert not refused
                acked.extend(it["id"] for i, it in enumerate(items) if i not in refused)
                b += 1

    try:
        h = _healthy(url, proc)
        indexer_pid, trends_pid = h["indexer_pid"], h["trends_pid"]
        t = threading.Thread(target=ingest)
        t.start()
        time.sleep(2.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # the indexer process dies with the server: no orphan keeps the index lock
        assert _wait_until(lambda: _gone(indexer_pid), 10), "indexer outlived the server"
        assert _wait_until(lambda: _gone(trends_pid), 10), "trend process outlived the server"
        stop.set()
        t.join(20)
        assert len(acked) >= 500, "too little was ingested before the kill to test anything"
        proc = _start(data, port, log)
        health = _healthy(url, proc)
        con = sqlite3.connect(data / "log.sqlite3")
        logged = con.execute("SELECT count(*) FROM posts").fetchone()[0]
        con.close()
        assert logged >= len(acked)  # an in-flight batch may have committed unacknowledged
        assert health["index_docs"] == logged  # one document per logged post: no duplicates
        seen: Counter[str] = Counter()
        with httpx.Client(headers=KEY, timeout=10) as c:
            for i in range(0, len(acked), 30):
                chunk = acked[i : i + 30]
                q = " ".join("u{}x{}".format(*pid[1:].split("-")) for pid in chunk)
                r = c.get(f"{url}/v1/search", params={"q": q, "limit": 100})
                assert r.status_code == 200
                seen.update(h["id"] for h in r.json()["hits"] if h["id"] in chunk)
        missing = [pid for pid in acked if seen[pid] == 0]
        assert not missing, f"{len(missing)} acknowledged posts not searchable: {missing[:5]}"
        assert max(seen.values()) == 1
    finally:
        stop.set()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
