"""Trend counts live in the trend process and are saved with the log position they reflect:
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
    # the status knows where the loaded counts stand, with nothing new to count
    assert _wait_until(lambda: svc.health()["trends_counted_seq"] == 40, 10)
    assert svc.health()["trends_lag"] == 0
    assert _counts(svc)["alpha"] == 40
    ingest_and_wait(svc, [post(f"b{i}", "beta #two", age_s=30) for i in range(25)])
    pid = svc.trend_proc.kill_child()  # no save since the restart: the tail is in the log only
    assert pid is not None
    assert _wait_until(lambda: svc.healthy() and svc.trend_proc.pid != pid, 30)
    counts = _counts(svc)
    assert (counts["alpha"], counts["#one"], counts["beta"], counts["#two"]) == (40, 40, 25, 25)


def test_without_a_save_the_retention_period_is_replayed(make_service):
    svc = make_service(trend_save_s=3600)
    ingest_and_wait(svc, [post(f"c{i}", "gamma rays", age_s=20) for i in range(12)])
    pid = svc.trend_proc.kill_child()
    assert pid is not None
    assert _wait_until(lambda: svc.healthy() and svc.trend_proc.pid != pid, 30)
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


def _log_posts(log, prefix: str, n: int, text: str) -> None:
    from gigafactory.grok.memory.log import KIND_POST, post_document
    from gigafactory.grok.memory.post import to_utc

    from .conftest import NOW

    ids = [f"{prefix}{i}" for i in range(n)]
    log.append(KIND_POST, ids, [post_document(i, "al", text, to_utc(NOW)) for i in ids])


def test_trend_feeder_counts_each_post_once_and_answers_once_it_covers_min_seq(tmp_path):
    """The trend process's loop: a start loads the save and counts only the log after it;
    queries wait (up to ``max_wait_s``) for the counts to reach their ``min_seq`` and for
    the replay after a start, then get the counts or the reason they have none."""
    from gigafactory.grok.memory.log import PostLog
    from gigafactory.grok.memory.trends import TrendFeeder

    log = PostLog(tmp_path / "log.sqlite3", "NORMAL")
    for b in range(10):
        _log_posts(log, f"p{b}-", 20, "delta #four")
    store = TrendStore(tmp_path / "trends")
    f = TrendFeeder(log, TrendCounter(60, 3600), store, save_s=3600, batch=50, max_wait_s=30)
    f.load()
    assert (f.counted_seq, f.loaded_to, f.complete) == (0, 200, False)
    got: list[tuple[int, object]] = []

    def reply(rid, result):
        got.append((rid, result))

    f.queries.put((1, (900, None, 6, 10, 1, 0)))
    f.answer(reply, now=0.0)
    assert got == []  # loading: it waits ...
    f.answer(reply, now=31.0)
    assert got[0][0] == 1 and "loading (0% of the log read)" in got[0][1]  # ... then says so
    assert f.step() == 50 and f.counted_seq == 50  # a batch at a time, in log order
    while f.step():
        pass
    assert f.complete and f.counted_seq == 200
    f.queries.put((2, (900, None, 6, 10, 1, 250)))  # what search sees is ahead of the counts
    f.answer(reply, now=100.0)
    assert len(got) == 1  # it waits for them
    _log_posts(log, "q", 50, "delta #five")
    f.step()
    f.answer(reply, now=101.0)
    counts = {t.term: t.count for t in got[1][1]}
    assert got[1][0] == 2 and (counts["delta"], counts["#four"], counts["#five"]) == (250, 200, 50)
    f.queries.put((3, (900, None, 6, 10, 1, 999)))  # never reached: answered after the wait
    f.answer(reply, now=200.0)
    f.answer(reply, now=231.0)
    assert got[2][0] == 3 and {t.term: t.count for t in got[2][1]} == counts
    f.queries.put((4, (10 * 86400, None, 6, 10, 1, 0)))  # a bad query: its reason, no crash
    f.answer(reply, now=300.0)
    assert got[3][0] == 4 and got[3][1].startswith("TrendWindowError")
    f.save()
    again = TrendFeeder(log, TrendCounter(60, 3600), TrendStore(tmp_path / "trends"))
    again.load()  # the save covers the whole log: nothing to replay
    assert (again.counted_seq, again.complete, again.step()) == (250, True, 0)
    assert {t.term: t.count for t in again.trends.top(900, limit=10, min_count=1)} == counts
    log.close()


def test_trend_feeder_run_counts_the_rest_and_saves_when_halted(tmp_path):
    import threading

    from gigafactory.grok.memory.log import PostLog
    from gigafactory.grok.memory.trends import TrendFeeder

    log = PostLog(tmp_path / "log.sqlite3", "NORMAL")
    _log_posts(log, "r", 120, "omega #six")
    f = TrendFeeder(log, TrendCounter(60, 3600), TrendStore(tmp_path / "trends"), batch=50)
    progress: list[int] = []
    halt = threading.Event()
    halt.set()
    f.run(halt, lambda rid, res: None, progress.append)
    assert progress == [0, 50, 100, 120]  # where the load left it, then each batch
    again = TrendCounter(60, 3600)
    assert TrendStore(tmp_path / "trends").load(again) == 120
    assert {t.term: t.count for t in again.top(900, min_count=1)}["#six"] == 120
    restarted = TrendFeeder(log, TrendCounter(60, 3600), TrendStore(tmp_path / "trends"))
    progress.clear()
    restarted.run(halt, lambda rid, res: None, progress.append)
    assert progress == [120]  # a restart on a saved, unchanged log reports its position
    log.close()
