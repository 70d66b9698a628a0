"""Index shards without a broker: partitioning, global-IDF merging of shard results, the
stream-sequence checkpoint and engagement updates of the shard writer."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from gigafactory.grok.memory.broker import BrokerError, check_url, partition_of
from gigafactory.grok.memory.log import post_document
from gigafactory.grok.memory.search import SearchQuery, build_query, search
from gigafactory.grok.memory.shards import KIND_UPDATE, ShardFeeder, open_shard, search_shards

NOW = datetime.now(UTC).replace(microsecond=0)


def body(pid: str, text: str, likes: int = 0) -> bytes:
    return post_document(pid, "ann", text, NOW - timedelta(minutes=1), likes=likes).encode()


def feed(path, docs: list[tuple[str, str]], start_seq: int = 1) -> ShardFeeder:
    f = ShardFeeder(open_shard(path), heap_bytes=16_000_000)
    for seq, (pid, text) in enumerate(docs, start_seq):
        f.add(seq, "post", body(pid, text))
    f.commit()
    f.index.reload()
    return f


def test_partition_is_crc32_of_the_id_and_spreads_evenly():
    assert partition_of("abc", 2) == 891568578 % 2  # zlib.crc32(b"abc"), same on every machine
    counts = [0, 0, 0, 0]
    for i in range(20_000):
        counts[partition_of(f"post-{i}", 4)] += 1
    assert max(counts) - min(counts) < 0.05 * 5_000


@pytest.mark.parametrize("url", ["http://127.0.0.1:4222", "nats://127.0.0.1", "127.0.0.1:4222"])
def test_a_broker_url_must_be_nats_host_port(url):
    with pytest.raises(BrokerError, match=r"nats://HOST:PORT"):
        check_url(url)
    assert check_url("nats://a:1,nats://b:2") == "nats://a:1,nats://b:2"


def corpus(seed: int = 0) -> list[tuple[str, str]]:
    """Posts of four words each (equal lengths: BM25's length part is then the same on every
    shard); 'rare' is in few posts, 'common' in many."""
    rng = random.Random(seed)
    filler = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
    docs = []
    for i in range(400):
        words = rng.sample(filler, 4)
        if i % 40 == 0:
            words[0] = "rare"
        if i % 3 == 0:
            words[1] = "common"
        docs.append((f"p{i}", " ".join(words)))
    return docs


def one_and_two_shards(tmp_path, docs):
    """The corpus in one index, and split in two shards with different term statistics:
    shard a holds half the 'rare' posts among a quarter of the others, shard b the rest, so
    each shard's own IDF of 'rare' differs from the global one."""
    single = feed(tmp_path / "single", docs).index
    a = [d for i, d in enumerate(docs) if ((i % 80 == 0) if "rare" in d[1] else (i % 4 == 0))]
    b = [d for d in docs if d not in a]
    assert 4 <= sum("rare" in d[1] for d in a) <= 6 and len(a) < len(b) / 2
    return single, [feed(tmp_path / "a", a).index, feed(tmp_path / "b", b).index]


def test_shards_merged_with_global_idf_rank_as_one_index_would(tmp_path):
    docs = corpus()
    single, shards = one_and_two_shards(tmp_path, docs)
    for q in ("rare common", "rare gamma", "common beta delta"):
        sq = SearchQuery(q, limit=30)
        one = search(single, sq, now_us=0)
        many = search_shards(shards, sq, now_us=0)
        assert len(one) == 30
        # the same scores in the same order (ties among equal posts may come in any order)
        assert [h.bm25 for h in many] == pytest.approx([h.bm25 for h in one], rel=0.01)
        top = [h for h in one if h.bm25 > one[-1].bm25 * 1.02]  # above the cut's tie
        assert {h.id for h in many[: len(top)]} == {h.id for h in top}


def test_without_global_idf_the_shard_scores_are_not_comparable(tmp_path):
    """The control of the test above: merging the shards' own BM25 scores ranks differently."""
    docs = corpus()
    single, shards = one_and_two_shards(tmp_path, docs)
    sq = SearchQuery("rare common", limit=30)
    local = []
    for ix in shards:
        query, _ = build_query(ix.schema, sq)
        searcher = ix.searcher()
        local += [s for s, _addr in searcher.search(query, 30).hits]
    merged = sorted(local, reverse=True)[:30]
    assert merged != pytest.approx([h.bm25 for h in search(single, sq, now_us=0)], rel=0.01)


def test_a_message_at_or_below_the_checkpoint_is_skipped_after_a_restart(tmp_path):
    f = feed(tmp_path / "s", [("p1", "first post"), ("p2", "second post")], start_seq=10)
    f.close()
    reopened = open_shard(tmp_path / "s")
    assert reopened.checkpoint_seq == 11 and reopened.rebuilt is None
    again = ShardFeeder(reopened, heap_bytes=16_000_000)
    again.add(11, "post", body("p2", "second post"))  # redelivered: already committed
    again.add(12, "post", body("p3", "third post"))
    again.commit()
    again.index.reload()
    ids = sorted(h.id for h in search(again.index, SearchQuery("post")))
    assert ids == ["p1", "p2", "p3"] and again.skipped == 1


def test_updates_replace_the_counts_of_committed_and_pending_posts(tmp_path):
    f = feed(tmp_path / "s", [("p1", "rocket launch")])
    f.add(2, "post", body("p2", "rocket landing"))
    f.add(3, KIND_UPDATE, b'{"id": "p1", "likes": 7, "reposts": 1, "replies": 0}')
    f.add(4, KIND_UPDATE, b'{"id": "p2", "likes": 2, "reposts": 0, "replies": 0}')
    f.add(5, KIND_UPDATE, b'{"id": "nope", "likes": 2, "reposts": 0, "replies": 0}')
    f.commit()
    f.index.reload()
    hits = {h.id: (h.likes, h.reposts) for h in search(f.index, SearchQuery("rocket"))}
    assert hits == {"p1": (7, 1), "p2": (2, 0)}  # one document each, new counts; 'nope' dropped


def test_an_unreadable_shard_is_rebuilt_from_the_stream(tmp_path):
    feed(tmp_path / "s", [("p1", "first post")]).close()
    (tmp_path / "s" / "meta.json").write_text("not json")
    opened = open_shard(tmp_path / "s")
    assert opened.checkpoint_seq == 0 and opened.rebuilt is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--partition", "-1"], "--partition -1"),
        (["--partition", "0", "--commit-interval", "0"], "--commit-interval 0"),
    ],
)
def test_indexer_refuses_bad_options_before_connecting(capsys, tmp_path, args, message):
    from gigafactory.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["indexer", "--broker", "nats://127.0.0.1:1", "--data-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing created
