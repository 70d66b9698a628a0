"""The durable log, the indexer's catch-up, and rebuilding a lost or corrupt index."""

from __future__ import annotations

import shutil
import sqlite3
import threading

import orjson
import pytest

from gigafactory.grok.memory import index as index_mod
from gigafactory.grok.memory.generator import generate_posts
from gigafactory.grok.memory.index import IndexFeeder, checkpoint_of, open_index, post_documents
from gigafactory.grok.memory.log import KIND_POST, LogError, LogReader, PostLog
from gigafactory.grok.memory.post import EngagementUpdate, Post
from gigafactory.grok.memory.search import SearchQuery

from .conftest import ingest_and_wait, post


def _posts(n: int, prefix: str = "p") -> list[dict]:
    return [post(f"{prefix}{i}", f"word{i} common shared text", age_s=i) for i in range(n)]


def _ids(svc, q: str, limit: int = 100) -> list[str]:
    return [h.id for h in svc.search(SearchQuery(q=q, limit=limit))]


def test_log_commits_survive_reopen_and_refuse_duplicates(tmp_path):
    path = tmp_path / "log.sqlite3"
    lg = PostLog(path)
    batch = [Post.model_validate(p) for p in _posts(5)]
    res = lg.append_posts(batch)
    assert res.accepted == [0, 1, 2, 3, 4] and res.last_seq == 5
    # a second connection (another process would do the same) sees the committed rows
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT count(*) FROM log").fetchone()[0] == 5
    con.close()
    lg.close()
    lg = PostLog(path)
    assert lg.last_seq == 5 and lg.count_posts() == 5
    again = lg.append_posts([batch[0], Post.model_validate(post("new", "x"))])
    assert list(again.refused) == [0] and again.refused[0].startswith("duplicate")
    assert again.accepted == [1] and again.last_seq == 6
    upd = lg.append_updates([EngagementUpdate(id="p1", likes=3), EngagementUpdate(id="zz")])
    assert upd.accepted == [0] and upd.refused[1].startswith("unknown")
    assert [r.seq for r in lg.read_after(4)] == [5, 6, 7]
    assert lg._w.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_texts_after_gives_trend_counting_the_posts_time_and_text_read_by_sqlite(tmp_path):
    lg = PostLog(tmp_path / "log.sqlite3")
    lg.append_posts([Post.model_validate(p) for p in _posts(3)])
    lg.append_updates([EngagementUpdate(id="p1", likes=3)])  # seq 4: not a post
    lg.append_posts([Post.model_validate(post("q", 'a "quoted" \\ line\n東京 🚀'))])
    bodies = {r.seq: orjson.loads(r.body) for r in lg.read_after(0) if r.kind == KIND_POST}
    last, read, posts = lg.texts_after(1, limit=3)
    assert (last, read) == (4, 3)
    assert posts == [(bodies[s]["created_us"], bodies[s]["text"]) for s in (2, 3)]
    last, read, posts = lg.texts_after(4)
    assert (last, read, posts) == (5, 1, [(bodies[5]["created_us"], 'a "quoted" \\ line\n東京 🚀')])
    assert lg.texts_after(5) == (5, 0, [])
    lg.close()


def test_log_rejects_bad_sync_mode(tmp_path):
    with pytest.raises(LogError, match="synchronous"):
        PostLog(tmp_path / "l.db", synchronous="OFF")


def test_index_catches_up_from_log_after_restart(make_service):
    svc = make_service()
    assert ingest_and_wait(svc, _posts(50)) == 50
    svc.close()
    # posts logged while no indexer ran (as after a crash between ack and index commit)
    lg = PostLog(svc.settings.data_dir / "log.sqlite3")
    lg.append_posts([Post.model_validate(p) for p in _posts(30, prefix="late")])
    lg.close()
    svc2 = make_service()
    assert svc2.rebuilt is None
    assert svc2.indexer.start_seq == 50  # resumed from its checkpoint
    assert svc2.indexer.wait_searchable(80, 30)
    assert len(_ids(svc2, "common")) == 80
    assert svc2.health()["index_docs"] == 80


def test_each_commit_adds_a_checkpoint_the_newest_counts_and_old_ones_go_together(
    tmp_path, monkeypatch
):
    # deleting the previous checkpoint at every commit left a deleted document in every
    # segment (slower merges); now they accumulate up to KEEP_CHECKPOINTS, then go at once
    monkeypatch.setattr(index_mod, "KEEP_CHECKPOINTS", 3)
    lg = PostLog(tmp_path / "log.sqlite3")
    reader = LogReader(tmp_path / "log.sqlite3")
    stop = threading.Event()
    stop.set()  # run() indexes what is logged, commits once and returns
    for k in range(1, 8):
        lg.append_posts([Post.model_validate(post(f"c{k}", f"checkpointed post {k}"))])
        opened = open_index(tmp_path / "index", reader)
        assert opened.rebuilt is None or k == 1  # reopened with many checkpoints: consistent
        assert opened.checkpoint_seq == k - 1
        IndexFeeder(opened, reader).run(stop, lambda seq: None)
        cp = checkpoint_of(opened.index)
        assert (cp.seq, cp.posts, cp.log_id) == (k, k, f"c{k}")
        assert cp.kept == (k - 1) % 3 + 1
        assert post_documents(opened.index) == k
    lg.close()


@pytest.mark.parametrize(
    "damage", ["delete", "garbage_meta", "garbage_segments", "log_reset", "log_replaced"]
)
def test_lost_or_corrupt_index_is_rebuilt(make_service, damage):
    svc = make_service()
    ingest_and_wait(svc, _posts(40))
    svc.ingest_updates([{"id": "p3", "likes": 999}])
    assert svc.indexer.wait_searchable(41, 30)
    svc.close()
    index_dir = svc.settings.data_dir / "index"
    if damage == "delete":
        shutil.rmtree(index_dir)
    elif damage == "garbage_meta":
        (index_dir / "meta.json").write_text("{not json")
    elif damage == "garbage_segments":
        for f in index_dir.iterdir():
            if f.suffix in (".idx", ".store", ".term", ".fast"):
                f.write_bytes(b"\x00garbage" * 7)
    else:  # the log was replaced by a shorter one (the index is ahead) or a longer one
        (svc.settings.data_dir / "log.sqlite3").unlink()
        lg = PostLog(svc.settings.data_dir / "log.sqlite3")
        lg.append_posts(
            [Post.model_validate(p) for p in _posts(10 if damage == "log_reset" else 60)]
        )
        lg.close()
    svc2 = make_service()
    assert svc2.rebuilt
    expected = {"log_reset": 10, "log_replaced": 60}.get(damage, 40)
    assert svc2.indexer.wait_searchable(svc2.log.last_seq, 30)
    assert sorted(_ids(svc2, "common")) == sorted(f"p{i}" for i in range(expected))
    if not damage.startswith("log_"):  # the engagement update was replayed too
        hit = svc2.search(SearchQuery(q="word3"))[0]
        assert (hit.id, hit.likes) == ("p3", 999)


def test_engagement_updates_replace_counts_without_duplicates(make_service):
    svc = make_service()
    ingest_and_wait(svc, _posts(5))
    for likes in (1, 5, 7):
        res = svc.ingest_updates([{"id": "p2", "likes": likes, "reposts": 1}])
    assert svc.indexer.wait_searchable(res.last_seq, 30)
    hits = svc.search(SearchQuery(q="word2"))
    assert [(h.id, h.likes, h.reposts) for h in hits] == [("p2", 7, 1)]
    assert len(_ids(svc, "common")) == 5
    res = svc.search(SearchQuery(min_engagement=8))
    assert [h.id for h in res] == ["p2"]


def test_generated_feed_round_trip(make_service):
    svc = make_service()
    items = [p.model_dump(mode="json") for p in generate_posts(500, seed=11)]
    res = svc.ingest_posts(items)
    assert res.accepted == 500 and not res.refused
    assert svc.indexer.wait_searchable(res.last_seq, 30)
    assert svc.health()["index_docs"] == 500
