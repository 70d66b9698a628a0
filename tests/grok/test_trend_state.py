"""Trend counts live in the indexer process and are saved with the log position they reflect:
a restart loads them and replays only the log after that position (issue 10)."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from gigafactory.grok.memory.trends import TrendCounter, TrendStore
from gigafactory.grok.settings import GrokSettings, SettingsError

from .conftest import ingest_and_wait, post
from .test_indexer_process import _wait_until

US = 1_000_000
T0 = 1_700_000_000


def _counts(svc) -> dict[str, int]:
    return {t.term: t.count for t in svc.top_trends(900, min_count=1, limit=200)}


def test_store_round_trip_rewrites_only_changed_buckets_and_ignores_torn_saves(tmp_path):
    at = (T0 + 600) * US
    tc = TrendCounter(bucket_s=60, retention_s=3600)
    tc.add_many([((T0 + m * 60) * US, f"word{m} common common") for m in range(8)], at)
    store = TrendStore(tmp_path / "t")
    store.save(tc, seq=8)
    first = dict(store.files)
    tc.add_many([((T0 + 7 * 60) * US, "late arrival")], at)  # only the newest bucket changes
    store.save(tc, seq=9)
    changed = {b for b in first if store.files[b] != first[b]}
    assert changed == {(T0 + 7 * 60) // 60}
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(
        [*store.files.values(), "state.json"]
    )
    (tmp_path / "t" / "b1.g99.json").write_text("{}")  # a save torn before its manifest
    again = TrendCounter(bucket_s=60, retention_s=3600)
    assert TrendStore(tmp_path / "t").load(again, at) == 9
    assert again.top(600, at, limit=100, min_count=1) == tc.top(600, at, limit=100, min_count=1)
    assert not (tmp_path / "t" / "b1.g99.json").exists()
    # a save for another bucket size is not used
    assert TrendStore(tmp_path / "t").load(TrendCounter(bucket_s=30, retention_s=3600)) is None


def test_restart_loads_saved_counts_and_replays_only_the_tail_once(make_service):
    svc = make_service(trend_save_s=3600)
    ingest_and_wait(svc, [post(f"a{i}", "alpha #one", age_s=60) for i in range(40)])
    svc.close()  # the final save: counts up to seq 40
    saved = svc.settings.data_dir / "trends" / "state.json"
    assert saved.exists()
    svc = make_service(trend_save_s=3600)
    assert _counts(svc)["alpha"] == 40
    ingest_and_wait(svc, [post(f"b{i}", "beta #two", age_s=30) for i in range(25)])
    pid = svc.indexer.kill_child()  # no save since the restart: the tail is in the log only
    assert pid is not None
    assert _wait_until(lambda: svc.healthy() and svc.indexer.pid != pid, 30)
    counts = _counts(svc)
    assert (counts["alpha"], counts["#one"], counts["beta"], counts["#two"]) == (40, 40, 25, 25)


def test_without_a_save_the_retention_period_is_replayed(make_service):
    svc = make_service(trend_save_s=3600)
    ingest_and_wait(svc, [post(f"c{i}", "gamma rays", age_s=20) for i in range(12)])
    pid = svc.indexer.kill_child()
    assert pid is not None
    assert _wait_until(lambda: svc.healthy() and svc.indexer.pid != pid, 30)
    assert _counts(svc)["gamma"] == 12


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "99999"])
def test_trend_save_interval_is_validated(bad):
    with pytest.raises(SettingsError, match="trend_save_s"):
        GrokSettings.load({"GROK_TREND_SAVE_S": bad})


def test_trend_queries_do_not_wait_for_ingest(make_service):
    svc = make_service()
    ingest_and_wait(svc, [post(f"d{i}", f"delta{i % 7} talk") for i in range(200)])
    t0 = time.perf_counter()
    for _ in range(20):
        svc.top_trends(6 * 3600, baseline=1, min_count=1)
    assert (time.perf_counter() - t0) / 20 < 0.25
    assert Counter(_counts(svc))  # answered with counts


def test_a_feeder_behind_the_log_commits_before_it_counts_and_catches_up(tmp_path):
    """Freshness first: while the log is ahead of the index (full read batches) the feeder
    indexes and commits before counting trends (past ``max_uncounted`` waiting posts, the
    oldest read batch is counted each turn);
    once caught up every post is counted exactly once and saved at the seq counted."""
    import threading

    from gigafactory.grok.memory.index import IndexFeeder, open_index
    from gigafactory.grok.memory.log import KIND_POST, PostLog, post_document
    from gigafactory.grok.memory.post import to_utc

    from .conftest import NOW

    log = PostLog(tmp_path / "log.sqlite3", "NORMAL")
    created = to_utc(NOW)
    for b in range(10):  # 10 batches of 20 posts, all logged before the feeder starts
        ids = [f"p{b}-{i}" for i in range(20)]
        log.append(KIND_POST, ids, [post_document(i, "al", "delta #four", created) for i in ids])
    store = TrendStore(tmp_path / "trends")
    feeder = IndexFeeder(
        open_index(tmp_path / "index", log),
        log,
        commit_interval_s=0.0,
        batch=20,
        trends=TrendCounter(60, 3600),
        trend_store=store,
        max_uncounted=60,
    )
    seen: list[tuple[int, int, int]] = []  # (searchable, counted, waiting) at each commit
    halt = threading.Event()

    def on_commit(seq: int) -> None:
        seen.append((seq, feeder.counted_seq, feeder._n_uncounted))
        if seq == 200:
            halt.set()

    feeder.run(halt, on_commit)
    log.close()
    assert seen[0][:2] == (20, 0)  # the first batch was searchable before it was counted
    assert all(waiting <= 60 + 20 for _s, _c, waiting in seen)  # the cap + one read batch
    assert max(w for _s, _c, w in seen) > 60  # the cap was reached: counted a batch a turn
    assert any(counted < searchable for searchable, counted, _w in seen[1:])
    assert feeder.counted_seq == 200
    counts = {t.term: t.count for t in feeder.trends.top(900, limit=10, min_count=1)}
    assert (counts["delta"], counts["#four"]) == (200, 200)
    again = TrendCounter(60, 3600)
    assert TrendStore(tmp_path / "trends").load(again) == 200
    assert {t.term: t.count for t in again.top(900, limit=10, min_count=1)} == counts
