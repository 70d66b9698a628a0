"""Index shards without a broker: partitioning, global-IDF merging of shard results, the
stream-sequence checkpoint, engagement updates and repeated ids of the shard writer, its trend
counts (saved, replayed, answered and merged over partitions) and its guards against a
recreated or shortened stream."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from nats.js.api import StreamConfig, StreamInfo, StreamState

from gigafactory.grok.memory.analysis import ESC, SEP
from gigafactory.grok.memory.broker import BrokerError, check_url, partition_of
from gigafactory.grok.memory.index import Checkpoint
from gigafactory.grok.memory.log import post_document
from gigafactory.grok.memory.rank import RankWeights
from gigafactory.grok.memory.search import SearchQuery, build_query, clause_tiers, search
from gigafactory.grok.memory.shards import (
    KIND_UPDATE,
    ShardFeeder,
    StreamReplaced,
    check_stream,
    created_us,
    load_trends,
    open_shard,
    read_trend_answer,
    search_shards,
    trend_answer,
)
from gigafactory.grok.memory.trends import TrendCounter, TrendStore, WindowCounts

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


@pytest.mark.parametrize(("candidates", "partial_asked"), [(3, False), (10, True)])
def test_partial_matches_of_an_unspaced_run_are_asked_when_the_exact_ones_are_too_few(
    tmp_path, monkeypatch, candidates, partial_asked
):
    """The phrases of a run's character bigrams (the costly clauses) go into a query only when
    the run's exact matches do not fill the candidates (``search.candidate_tiers``); one index
    and its shards decide alike, and a partial match ranks below every exact one."""
    import gigafactory.grok.memory.search as search_module
    import gigafactory.grok.memory.shards as shards_module

    asked: list[list] = []

    def spy(schema, sq, clauses=None, boosts=None):
        asked.append(list(clauses or []))
        return build_query(schema, sq, clauses, boosts)

    monkeypatch.setattr(search_module, "build_query", spy)
    monkeypatch.setattr(shards_module, "build_query", spy)
    docs = [(f"x{i}", f"今日はすごい {i}") for i in range(4)] + [("part", "すごく良い")]
    docs += [(f"o{i}", f"other post {i}") for i in range(6)]
    single = feed(tmp_path / "single", docs).index
    shards = [feed(tmp_path / "a", docs[::2]).index, feed(tmp_path / "b", docs[1::2]).index]
    w, sq = RankWeights(candidates=candidates), SearchQuery("すごい", limit=candidates)
    exact = {f"x{i}" for i in range(4)}
    for run in (lambda: search(single, sq, w), lambda: search_shards(shards, sq, w)):
        asked.clear()
        ids = [h.id for h in run()]
        assert any(("す", "ご") in clauses for clauses in asked) == partial_asked
        if partial_asked:
            assert set(ids) == exact | {"part"} and ids[-1] == "part"
        else:
            assert len(ids) == candidates and set(ids) <= exact


@pytest.mark.parametrize("q", ["東京都 東京", "東京 東京都"])
def test_a_run_asked_on_its_own_is_exact_in_any_order(q):
    clauses, partial = clause_tiers(q)
    assert ("東", "京") in clauses and ("東", "京") not in partial  # the user typed 東京
    assert ("京", "都") in partial


def test_the_bigrams_of_a_long_run_leave_room_for_the_words_after_it():
    clauses, partial = clause_tiers(
        "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむ tokyo"
    )
    assert "tokyo" in clauses and len(clauses) == 32 and len(partial) == 30


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
    texts = {"p1": "rocket launch 🚀 東京", "p2": "rocket landing +$5"}
    f = feed(tmp_path / "s", [("p1", texts["p1"])])
    f.add(2, "post", body("p2", texts["p2"]))
    f.add(3, KIND_UPDATE, b'{"id": "p1", "likes": 7, "reposts": 1, "replies": 0}')
    f.add(4, KIND_UPDATE, b'{"id": "p2", "likes": 2, "reposts": 0, "replies": 0}')
    f.add(5, KIND_UPDATE, b'{"id": "nope", "likes": 2, "reposts": 0, "replies": 0}')
    f.commit()
    f.index.reload()
    hits = {h.id: (h.likes, h.reposts, h.text) for h in search(f.index, SearchQuery("rocket"))}
    # one document each, new counts, the text as posted; 'nope' dropped
    assert hits == {"p1": (7, 1, texts["p1"]), "p2": (2, 0, texts["p2"])}
    assert [h.id for h in search(f.index, SearchQuery("🚀 東京"))] == ["p1"]
    assert [h.id for h in search(f.index, SearchQuery("$"))] == ["p2"]


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


def test_a_post_repeated_past_the_duplicate_window_stays_one_document_with_its_counts(tmp_path):
    """The stream drops a repeated ``Nats-Msg-Id`` only within its window; the shard skips a
    post whose id it holds, committed or pending, so the first copy and its counts stay."""
    f = feed(tmp_path / "s", [("p1", "rocket launch")])
    f.add(2, KIND_UPDATE, b'{"id": "p1", "likes": 7, "reposts": 1, "replies": 0}')
    f.commit()
    f.add(3, "post", body("p1", "rocket launch"))  # a retry long after: committed copy
    f.add(4, "post", body("p2", "rocket landing"))
    f.add(5, "post", body("p2", "rocket landing"))  # and a repeat still pending
    f.commit()
    f.close()
    hits = [(h.id, h.likes) for h in search(f.index, SearchQuery("rocket"))]
    assert sorted(hits) == [("p1", 7), ("p2", 0)] and f.repeats == 2
    assert open_shard(tmp_path / "s").checkpoint.posts == 2  # the checkpoint counts agree


def counting(path, counter: TrendCounter, counted_seq: int | None = None) -> ShardFeeder:
    return ShardFeeder(open_shard(path), 16_000_000, trends=counter, counted_seq=counted_seq)


def test_the_indexer_counts_each_post_once_and_replays_only_what_its_save_missed(tmp_path):
    f = counting(tmp_path / "s", TrendCounter())
    for seq, pid in enumerate(["p1", "p2", "p3"], 1):
        f.add(seq, "post", body(pid, "#launch today"))
    f.add(4, "post", body("p1", "#launch today"))  # a repeat: not counted again
    f.add(5, KIND_UPDATE, b'{"id": "p2", "likes": 1, "reposts": 0, "replies": 0}')
    f.count_pending()
    f.commit()
    f.close()
    assert f.trends_complete and f.trends.window_counts(900).now["#launch"] == 3
    # a save taken at seq 2 (p1, p2): the restart counts from seq 3, indexes from seq 6
    saved = TrendCounter()
    saved.add_many([(int(NOW.timestamp() * 1e6), "#launch today")] * 2)
    again = counting(tmp_path / "s", saved, counted_seq=2)
    assert not again.trends_complete and again.resume_seq == 2
    for seq, pid in [(3, "p3"), (4, "p1")]:
        again.add(seq, "post", body(pid, "#launch today"))
    again.add(6, "post", body("p4", "#launch today"))
    again.count_pending()
    assert again.trends_complete
    # p3 and the repeat at 4 were replayed (counted, not indexed: the replay does not look
    # ids up, so a repeat past the duplicate window counts again there), p4 is new
    assert again.trends.window_counts(900).now["#launch"] == 5 and again.skipped == 0
    again.commit()
    assert sorted(h.id for h in search(again.index, SearchQuery("launch"))) == [
        "p1", "p2", "p3", "p4"
    ]  # fmt: skip


def test_without_a_save_the_counts_come_from_the_shard(tmp_path):
    feed(tmp_path / "s", [("p1", "#eclipse now 🌒"), ("p2", "#eclipse again 🌒")]).close()
    store = TrendStore(tmp_path / "s" / "trends")
    counter = TrendCounter()
    assert load_trends(open_shard(tmp_path / "s"), counter, store) is None
    now = counter.window_counts(900).now
    assert now["#eclipse"] == 2
    assert not [t for t in now if ESC in t or SEP in t]  # counted as posted, not index forms
    store.save(counter, 2)
    other = TrendCounter()
    assert load_trends(open_shard(tmp_path / "s"), other, store) == 2
    assert other.window_counts(900).now == counter.window_counts(900).now


def test_an_idle_partition_follows_the_stream_and_a_shortened_stream_rewinds_it(tmp_path):
    f = feed(tmp_path / "s", [("p1", "first post")])
    f.advance(40)  # the other partitions took seqs 2..40
    f.commit()
    assert open_shard(tmp_path / "s").checkpoint_seq == 40
    f.rewind(30)  # the broker lost 31..40: new messages will reuse those sequences
    assert open_shard(tmp_path / "s").checkpoint_seq == 30
    f.add(31, "post", body("p2", "second post"))
    f.commit()
    f.close()
    assert sorted(h.id for h in search(f.index, SearchQuery("post"))) == ["p1", "p2"]


def stream(created: datetime, last_seq: int) -> StreamInfo:
    return StreamInfo(
        config=StreamConfig(name="GROK_POSTS"),
        state=StreamState(messages=last_seq, bytes=0, first_seq=1, last_seq=last_seq,
                          consumer_count=0),
        created=created,
    )  # fmt: skip


def test_a_recreated_stream_is_refused_and_a_shortened_one_rewinds(tmp_path):
    then = NOW - timedelta(days=1)
    ours = Checkpoint(seq=50, posts=3, log_id="GROK_POSTS", log_us=created_us(stream(then, 0)))
    assert check_stream(ours, stream(then, 80), tmp_path) is False  # the same stream, ahead
    assert check_stream(ours, stream(then, 20), tmp_path) is True  # it lost messages: rewind
    with pytest.raises(StreamReplaced, match=r"deleted and recreated.*Move .* away"):
        check_stream(ours, stream(NOW, 80), tmp_path)
    legacy = Checkpoint(seq=50, posts=3)  # a shard from before the identity was kept
    assert check_stream(legacy, stream(NOW, 80), tmp_path) is False
    with pytest.raises(StreamReplaced):
        check_stream(legacy, stream(NOW, 20), tmp_path)
    assert check_stream(Checkpoint(), stream(NOW, 0), tmp_path) is False  # an empty shard


def test_window_counts_of_the_partitions_add_up_to_those_of_one_counter(tmp_path):
    at = int(NOW.timestamp() * 1e6)
    # each term at least twice per minute on each partition: a closed minute drops the terms a
    # counter saw once (trends.TrendCounter), which a single counter would have kept
    whole, parts = TrendCounter(), [TrendCounter(), TrendCounter()]
    for b in range(30):
        for t in range(7):
            group = [(at - 60_000_000 * b, f"#tag{t} word{b * t % 5} the")] * (4 + (b + t) % 4)
            whole.add_many(group, at)
            parts[0].add_many(group[::2], at)
            parts[1].add_many(group[1::2], at)
    answers = []
    for k, counter in enumerate(parts):
        f = counting(tmp_path / f"s{k}", counter)
        request = orjson.dumps({"window_s": 600, "at_us": at, "baseline": 2})
        answers.append(read_trend_answer(trend_answer(f, request, 1 << 20), 60))
        f.close()
    merged = WindowCounts.merge(answers).rank(50, 1)
    assert merged == whole.top(600, at, 2, 50, 1) and len(merged) > 10
    assert "the" not in answers[0].now  # stop words never rank: not sent
    with pytest.raises(ValueError, match="same trend_bucket_s"):
        read_trend_answer(trend_answer(f, request, 1 << 20), 30)
    with pytest.raises(ValueError, match="over the broker's max_payload"):
        read_trend_answer(trend_answer(f, request, 100), 60)
    with pytest.raises(ValueError, match="exceeds the 21600s"):
        late = orjson.dumps({"window_s": 86400, "at_us": at, "baseline": 2})
        read_trend_answer(trend_answer(f, late, 1 << 20), 60)
    loading = counting(tmp_path / "s0", TrendCounter(), counted_seq=0)
    loading.count_to = 5  # a save behind the checkpoint: not complete until replayed
    with pytest.raises(ValueError, match="trend counts are loading"):
        read_trend_answer(trend_answer(loading, request, 1 << 20), 60)
    loading.close()


def test_indexer_refuses_a_bad_trend_setting_before_connecting(capsys, tmp_path, monkeypatch):
    from gigafactory.cli import main

    monkeypatch.setenv("GROK_TREND_BUCKET_S", "0")
    with pytest.raises(SystemExit) as exit_:
        main(["indexer", "--broker", "nats://127.0.0.1:1", "--data-dir", str(tmp_path),
              "--partition", "0"])  # fmt: skip
    err = " ".join(capsys.readouterr().err.split())
    assert exit_.value.code == 2 and "GROK_TREND_BUCKET_S" in err and "Traceback" not in err


def test_shard_positions_wait_for_every_shard_to_cover_a_sequence(tmp_path):
    """``/v1/search?min_seq=`` over a broker: the slowest shard decides, positions are polled
    until they cover the sequence or the timeout passes."""
    import threading

    from gigafactory.grok.memory.shards import ShardPositions, ShardSet, shard_dir

    feeders = [ShardFeeder(open_shard(shard_dir(tmp_path, k)), 16_000_000) for k in range(2)]
    for f in feeders:
        f.advance(3)
        f.commit()
    positions = ShardPositions(ShardSet(tmp_path, 2, reload_s=0.0))
    assert positions.searchable_seq == 3 and positions.wait_searchable(3, 0.1)
    assert not positions.wait_searchable(5, 0.1)  # no shard is there yet
    feeders[0].advance(5)
    feeders[0].commit()
    assert not positions.wait_searchable(5, 0.1)  # one shard is not enough
    later = threading.Timer(0.2, lambda: (feeders[1].advance(6), feeders[1].commit()))
    later.start()
    assert positions.wait_searchable(5, 10)  # seen once the other shard commits past it
    later.join()
    assert positions.searchable_seq == 5
    for f in feeders:
        f.close()
