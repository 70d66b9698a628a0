"""Bad input is a 4xx and harms nothing else (issue 10): overflowing times, huge filters,
unbounded trend windows, a post dated at the edge of the allowed clock skew."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gigafactory.grok.api.app import create_app
from gigafactory.grok.settings import GrokSettings

from .conftest import ingest_and_wait, post

KEY = {"x-api-key": "k1"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("hardening") / "d"
    settings = GrokSettings.load({}, data_dir=data, api_keys="k1", commit_interval_s=0.05)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_overflowing_time_refuses_that_item_alone(client, stamp):
    tag = stamp[:4]
    batch = [
        post(f"{tag}a", "fine"),
        post("bad", "overflow") | {"created_at": stamp},
        post(f"{tag}b", "x"),
    ]
    r = client.post("/v1/posts", headers=KEY, json=batch)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    assert [(x["index"], x["reason"]) for x in body["refused"]] == [(1, "malformed")]
    assert "range" in body["refused"][0]["message"]
    updates = [{"id": f"{tag}a", "likes": 3}, {"id": f"{tag}b", "likes": 1, "at": stamp}]
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


@pytest.mark.parametrize("kind", ["file", "devnull", "empty", "under_file"])
def test_bad_data_dir_is_one_line_exit_2(tmp_path, capsys, kind):
    from gigafactory.cli import main

    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    value = {
        "file": str(a_file),
        "devnull": "/dev/null",
        "empty": "",
        "under_file": str(a_file / "sub"),
    }[kind]
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--data-dir", value, "--api-key", "k", "--port", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "data_dir" in err and "Traceback" not in err
    assert not (tmp_path / "log.sqlite3").exists() and not Path("log.sqlite3").exists()


def test_foreign_index_folder_is_never_deleted(tmp_path):
    from gigafactory.grok.memory.indexer import IndexerError
    from gigafactory.grok.memory.service import GrokService

    foreign = tmp_path / "data" / "index"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("someone else's")
    settings = GrokSettings.load({}, data_dir=tmp_path / "data", api_keys="k")
    with pytest.raises(IndexerError, match="never deleted"):
        GrokService(settings)
    assert (foreign / "notes.txt").read_text() == "someone else's"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_cleanly_and_save(tmp_path, sig):
    """Ctrl-C (SIGINT to the process group) logs no false indexer death; both signals end
    with the indexer's final commit and trend save (uvicorn re-raises SIGTERM after its
    shutdown, so the service closes in the app's shutdown)."""
    from .test_kill import _free_port, _healthy, _start

    port, log = _free_port(), tmp_path / "server.log"
    proc = _start(tmp_path / "data", port, log, start_new_session=True)
    try:
        _healthy(f"http://127.0.0.1:{port}", proc)
        if sig == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
            assert proc.wait(60) == 0
        else:
            proc.terminate()
            proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert "restarting" not in out and "exited with code" not in out, out
    assert (tmp_path / "data" / "trends" / "state.json").exists()
