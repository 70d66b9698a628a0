"""Group commit: concurrent single-post appends share transactions, verdicts stay exact."""

from __future__ import annotations

import threading

from gigafactory.grok.memory.log import KIND_POST, PostLog


def _run_threads(n: int, target) -> None:
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


def test_concurrent_single_posts_share_commits_and_survive_reopen(tmp_path):
    path = tmp_path / "log.sqlite3"
    lg = PostLog(path)
    per_thread, n_threads = 25, 32
    results: dict[str, int] = {}
    lock = threading.Lock()

    def client(t: int) -> None:
        for k in range(per_thread):
            pid = f"t{t}-{k}"
            res = lg.append(KIND_POST, [pid], [f'{{"id": "{pid}"}}'])
            assert res.accepted == [0] and not res.refused
            with lock:
                results[pid] = res.last_seq

    _run_threads(n_threads, client)
    total = per_thread * n_threads
    assert len(results) == total
    # every acknowledged id is at the sequence number its answer named, all distinct
    assert sorted(results.values()) == list(range(1, total + 1))
    assert lg.commits < total  # some requests shared a transaction
    lg.close()
    again = PostLog(path)
    rows = dict(again._w.execute("SELECT post_id, seq FROM log"))
    assert rows == results
    again.close()


def test_same_id_from_concurrent_batches_is_accepted_once(tmp_path):
    lg = PostLog(tmp_path / "log.sqlite3")
    verdicts: list[tuple[list[int], dict[int, str]]] = []
    lock = threading.Lock()

    def client(t: int) -> None:
        res = lg.append(KIND_POST, [f"own{t}", "shared"], ['{"a": 1}', '{"b": 2}'])
        with lock:
            verdicts.append((res.accepted, res.refused))

    _run_threads(16, client)
    shared_ok = [acc for acc, _ref in verdicts if 1 in acc]
    assert len(shared_ok) == 1
    refusals = [ref[1] for _acc, ref in verdicts if 1 in ref]
    assert len(refusals) == 15 and all(r.startswith("duplicate") for r in refusals)
    assert all(0 in acc for acc, _ref in verdicts)  # each batch's own post went in
    assert lg.count_posts() == 17
    lg.close()


def test_async_single_posts_from_one_event_loop_share_commits(make_service):
    import asyncio

    from .conftest import post

    svc = make_service()
    before = svc.log.commits

    async def burst() -> list:
        return await asyncio.gather(
            *(svc.ingest_posts_async([post(f"as{i}", f"async {i}")]) for i in range(80))
        )

    results = asyncio.run(burst())
    assert all(r.accepted == 1 and not r.refused for r in results)
    assert sorted(r.last_seq for r in results) == list(range(1, 81))
    assert svc.log.commits - before < 80
    big = asyncio.run(svc.ingest_posts_async([post(f"big{i}", "x") for i in range(100)]))
    assert big.accepted == 100  # validated in a worker thread
