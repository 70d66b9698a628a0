"""Bad input is a 4xx and harms nothing else (issue 10): overflowing times, huge filters,
unbounded trend windows, a post dated at the edge of the allowed clock skew."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from gigafactory.grok.api.app import create_app
from gigafactory.grok.settings import GrokSettings

from .conftest import ingest_and_wait, post

KEY = {"x-api-key": "k1"}


@pytest.fixture
def client(tmp_path):
    settings = GrokSettings.load({}, data_dir=tmp_path / "d", api_keys="k1", commit_interval_s=0.05)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_overflowing_time_refuses_that_item_alone(client, stamp):
    batch = [post("ok1", "fine"), post("bad", "overflow") | {"created_at": stamp}, post("ok2", "x")]
    r = client.post("/v1/posts", headers=KEY, json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in body["refused"]] == [(1, "malformed")]
    assert "range" in body["refused"][0]["message"]
    updates = [{"id": "ok1", "likes": 3}, {"id": "ok2", "likes": 1, "at": stamp}]
    r = client.post("/v1/engagement", headers=KEY, json=updates)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    assert r.json()["refused"][0]["index"] == 1


@pytest.mark.parametrize(
    "params",
    [
        {"since": "10000000000000d"},
        {"until": "10000000000000d"},
        {"since": "0001-01-01T00:00:00+01:00"},
        {"min_engagement": str(2**63)},
        {"min_engagement": str(10**13)},
    ],
)
def test_out_of_range_search_filters_are_422(client, params):
    r = client.get("/v1/search", params={"q": "x", **params}, headers=KEY)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()


def test_trend_window_is_bounded_by_retention_and_cheap(client):
    t0 = time.perf_counter()
    r = client.get("/v1/trends", params={"window": "36500d"}, headers=KEY)
    assert r.status_code == 422 and "retention" in r.json()["detail"]
    r = client.get("/v1/trends", params={"window": "6h", "baseline": 48}, headers=KEY)
    assert r.status_code == 200, r.text
    assert time.perf_counter() - t0 < 2.0


def test_post_at_clock_skew_edge_does_not_empty_trends_even_after_restart(make_service):
    svc = make_service()
    burst = [post(f"b{i}", "big #eclipse tonight", age_s=100 - i * 0.5) for i in range(40)]
    ingest_and_wait(svc, burst)
    assert "#eclipse" in {t.term for t in svc.top_trends(900, min_count=5)}
    ahead = post("ahead", "clock skew edge", age_s=-290)
    assert svc.ingest_posts([ahead]).accepted == 1
    assert "#eclipse" in {t.term for t in svc.top_trends(900, min_count=5)}
    svc.close()
    again = make_service()
    assert "#eclipse" in {t.term for t in again.top_trends(900, min_count=5)}
