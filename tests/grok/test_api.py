"""The HTTP API: auth, limits, malformed input, search and trends over HTTP."""

from __future__ import annotations

import orjson
import pytest
from fastapi.testclient import TestClient

from gigafactory.grok.api.app import create_app
from gigafactory.grok.settings import GrokSettings, SettingsError

from .conftest import post

KEY = {"x-api-key": "k1"}


@pytest.fixture
def client(tmp_path):
    settings = GrokSettings.load(
        {},
        data_dir=tmp_path / "d",
        api_keys="k1,k2",
        max_body_bytes=64 * 1024,
        max_batch=50,
        ingest_rate=1.0,
        ingest_burst=60,
        query_rate=1000,
        query_burst=1000,
        commit_interval_s=0.05,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _wait(c, seq):
    svc = c.app.state.service
    assert svc.indexer.wait_searchable(seq, 30)


def test_ingest_search_trends_health(client):
    r = client.post(
        "/v1/posts",
        headers=KEY,
        json=[post("a1", "hello #world", age_s=5), post("a2", "hello again", age_s=4)],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2 and body["refused"] == []
    _wait(client, body["last_seq"])
    r = client.get("/v1/search", params={"q": "hello", "limit": 5}, headers=KEY)
    assert r.status_code == 200
    assert {h["id"] for h in r.json()["hits"]} == {"a1", "a2"}
    r = client.get("/v1/trends", params={"window": "5m", "min_count": 1}, headers=KEY)
    assert r.status_code == 200 and {"#world", "hello"} <= {t["term"] for t in r.json()["trends"]}
    r = client.post(
        "/v1/engagement",
        headers={"authorization": "Bearer k2"},
        json=[{"id": "a1", "likes": 9}, {"id": "nope", "likes": 1}],
    )
    assert r.status_code == 200
    assert r.json()["accepted"] == 1 and r.json()["refused"][0]["reason"] == "unknown"
    _wait(client, r.json()["last_seq"])
    hits = client.get("/v1/search", params={"q": "world"}, headers=KEY).json()["hits"]
    assert hits[0]["likes"] == 9
    assert client.get("/healthz").json() == {"status": "ok"}  # liveness only, no key
    assert client.get("/v1/status").status_code == 401
    h = client.get("/v1/status", headers=KEY).json()
    assert h["status"] == "ok" and h["lag"] == 0 and h["index_docs"] == 2
    assert client.get("/docs").status_code == 200
    assert "/v1/search" in client.get("/openapi.json").json()["paths"]


def test_json_lines_and_partial_acceptance(client):
    lines = b"\n".join(
        orjson.dumps(p)
        for p in [
            post("l1", "one"),
            post("bad id", "two"),
            post("l1", "dup"),
            post("l3", "x" * 5000),
        ]
    )
    r = client.post(
        "/v1/posts", headers={**KEY, "content-type": "application/x-ndjson"}, content=lines
    )
    assert r.status_code == 200
    assert r.json()["accepted"] == 1
    assert [(x["index"], x["reason"]) for x in r.json()["refused"]] == [
        (1, "malformed"),
        (2, "duplicate"),
        (3, "oversized"),
    ]


@pytest.mark.parametrize("headers", [{}, {"x-api-key": "wrong"}, {"authorization": "Bearer x"}])
def test_401_without_valid_key(client, headers):
    for r in (
        client.post("/v1/posts", headers=headers, json=[post("z", "t")]),
        client.get("/v1/search", params={"q": "t"}, headers=headers),
        client.get("/v1/trends", headers=headers),
    ):
        assert r.status_code == 401 and "API key" in r.json()["detail"]


def test_413_body_and_batch(client):
    big = [post(f"b{i}", "y" * 3000) for i in range(30)]  # ~100 KB > 64 KiB
    r = client.post("/v1/posts", headers=KEY, content=orjson.dumps(big))
    assert r.status_code == 413 and "bytes" in r.json()["detail"]
    many = [post(f"m{i}", "z") for i in range(51)]  # more than max_batch
    r = client.post("/v1/posts", headers=KEY, json=many)
    assert r.status_code == 413 and "at most 50" in r.json()["detail"]


@pytest.mark.parametrize("body", [b"", b"[1,2", b'{"a": 1}\n{oops', b'"just a string"'])
def test_422_malformed_body(client, body):
    r = client.post("/v1/posts", headers=KEY, content=body)
    assert r.status_code == 422 and isinstance(r.json()["detail"], str)


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday-ish"},
        {"limit": "0"},
        {"limit": "abc"},
        {"min_engagement": "-1"},
        {"until": "2025-13-45"},
    ],
)
def test_422_bad_search_params(client, params):
    r = client.get("/v1/search", params={"q": "x", **params}, headers=KEY)
    assert r.status_code == 422 and r.json()["detail"]


def test_422_bad_trend_window(client):
    assert client.get("/v1/trends", params={"window": "soon"}, headers=KEY).status_code == 422


def test_429_rate_limit_per_key(client):
    r = client.post("/v1/posts", headers=KEY, json=[post(f"r{i}", "t") for i in range(50)])
    assert r.status_code == 200
    r = client.post("/v1/posts", headers=KEY, json=[post(f"s{i}", "t") for i in range(20)])
    assert r.status_code == 429 and "rate limit" in r.json()["detail"]
    assert int(r.headers["retry-after"]) >= 1
    # another key has its own bucket
    r = client.post("/v1/posts", headers={"x-api-key": "k2"}, json=[post("k2a", "t")])
    assert r.status_code == 200
    # nothing acknowledged was lost; the refused batch was not half-written
    _wait(client, r.json()["last_seq"])
    assert client.get("/v1/status", headers=KEY).json()["index_docs"] == 51


@pytest.mark.parametrize(
    "q", ['"foo AND (', "title:*", "text:[* TO *]", "id:~checkpoint", "(((", "\x00", "🚀" * 50]
)
def test_injection_like_queries_are_data(client, q):
    client.post("/v1/posts", headers=KEY, json=[post("f1", "about foo AND ( stuff")])
    r = client.get("/v1/search", params={"q": q, "author": q[:20], "lang": "en"}, headers=KEY)
    assert r.status_code in (200, 422), r.text
    assert r.status_code == 200 or "detail" in r.json()


def test_settings_errors_name_the_variable(tmp_path):
    with pytest.raises(SettingsError, match="GROK_PORT"):
        GrokSettings.load({"GROK_PORT": "eighty"})
    s = GrokSettings.load({"GROK_API_KEYS": "a, b,", "GROK_DATA_DIR": str(tmp_path)}, port=9)
    assert s.api_keys == ("a", "b") and s.port == 9 and s.data_dir == tmp_path


def test_search_with_min_seq_reads_what_was_just_written(client):
    """``min_seq`` (the ``last_seq`` of an ingest answer) waits for the index to cover the
    write, so the first search after a post finds it; a position past the log's end is 422;
    one the index has not reached within ``wait_ms`` is 504."""
    for i in range(5):  # a post, then at once a search for it: never a miss
        r = client.post("/v1/posts", headers=KEY, json=[post(f"rw{i}", f"readback{i} now")])
        seq = r.json()["last_seq"]
        r = client.get("/v1/search", params={"q": f"readback{i}", "min_seq": seq}, headers=KEY)
        assert r.status_code == 200, r.text
        assert [h["id"] for h in r.json()["hits"]] == [f"rw{i}"]
        assert r.json()["searchable_seq"] >= seq
    r = client.get("/v1/search", params={"q": "x", "min_seq": seq + 1000}, headers=KEY)
    assert r.status_code == 422 and "past the end of the log" in r.json()["detail"]
    for bad in ({"min_seq": -1}, {"min_seq": "abc"}, {"wait_ms": -5}, {"wait_ms": 10**9}):
        r = client.get("/v1/search", params={"q": "x", **bad}, headers=KEY)
        assert r.status_code == 422, bad
    svc = client.app.state.service
    svc.indexer.kill_child()  # the index cannot move while its process restarts
    r = client.post("/v1/posts", headers=KEY, json=[post("rw-late", "late write")])
    seq = r.json()["last_seq"]
    r = client.get("/v1/search", params={"q": "late", "min_seq": seq, "wait_ms": 0}, headers=KEY)
    assert r.status_code == 504 and "has not reached seq" in r.json()["detail"]
