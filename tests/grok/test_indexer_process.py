"""The indexer in its own process: restarted when it dies alone, gone when its parent goes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from gigafactory.grok.memory import indexer as indexer_module
from gigafactory.grok.memory.log import PostLog
from gigafactory.grok.memory.search import SearchQuery

from .conftest import ingest_and_wait, post


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in state


def _wait_until(cond, timeout: float) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_api_process_has_its_own_indexer_process(make_service):
    svc = make_service()
    h = svc.health()
    assert h["status"] == "ok" and h["indexer_pid"] not in (None, os.getpid())
    assert not _gone(h["indexer_pid"])


def test_trends_are_counted_in_a_lower_priority_process_of_their_own(make_service, monkeypatch):
    """The trend process is neither the API process nor the indexer, runs ``TREND_NICE``
    below them, and when it dies ingest and search go on while it restarts and catches up
    (the status says so meanwhile)."""
    monkeypatch.setattr(indexer_module, "RESTART_DELAYS_S", (1.0,))
    svc = make_service()
    h = svc.health()
    pid = h["trends_pid"]
    assert h["status"] == "ok" and pid not in (None, os.getpid(), h["indexer_pid"])

    def nice(p: int) -> int:  # field 19 of /proc/PID/stat, after the ")" of the name
        return int(Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[16])

    assert nice(pid) - nice(os.getpid()) == indexer_module.TREND_NICE
    assert nice(h["indexer_pid"]) == nice(os.getpid())
    ingest_and_wait(svc, [post(f"t{i}", "tango #nine") for i in range(40)])
    assert svc.trend_proc.kill_child() == pid
    seen: list[dict] = []
    assert _wait_until(lambda: seen.append(svc.health()) or seen[-1]["status"] == "degraded", 5)
    assert "trend process" in seen[-1]["trends_error"] and seen[-1]["indexer_error"] is None
    res = svc.ingest_posts([post(f"u{i}", "tango #nine") for i in range(10)])
    assert res.accepted == 10 and svc.indexer.wait_searchable(res.last_seq, 60)
    assert len(svc.search(SearchQuery(q="tango", limit=100))) == 50
    assert _wait_until(lambda: svc.healthy(), 30)
    counts = {t.term: t.count for t in svc.top_trends(900, min_count=1, limit=50)}
    assert counts["#nine"] == 50  # nothing lost, nothing counted twice
    h = svc.health()
    assert (h["trends_restarts"], h["trends_lag"]) == (1, 0) and h["trends_counted_seq"] == 50


def test_a_child_process_role_is_checked(tmp_path):
    with pytest.raises(ValueError, match="role 'search': one of index, trends"):
        indexer_module.IndexerProcess(tmp_path, role="search")
    cmd = [sys.executable, "-m", "gigafactory.grok.memory.indexer", "--role", "search"]
    cmd += ["--data-dir", str(tmp_path), "--fd", "0", "--parent-pid", str(os.getpid())]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'search'" in r.stderr


def test_killed_indexer_is_reported_restarted_and_catches_up(make_service, monkeypatch):
    # a second before the restart: the degraded state lasts long enough to be seen on a
    # loaded machine (0.2 s by default)
    monkeypatch.setattr(indexer_module, "RESTART_DELAYS_S", (1.0,))
    svc = make_service()
    ingest_and_wait(svc, [post(f"a{i}", f"before{i} shared") for i in range(50)])
    pid = svc.indexer.kill_child()
    assert pid is not None
    seen: list[dict] = []

    def reported() -> bool:
        seen.append(svc.health())
        return "exited" in (seen[-1]["indexer_error"] or "")

    assert _wait_until(reported, 5)
    # degraded comes with its reason from the first moment on, before the supervisor has
    # read the exit code (it was None in that moment: a status read then had no reason)
    assert all(h["indexer_error"] for h in seen if h["status"] == "degraded")
    assert seen[-1]["status"] == "degraded"
    # ingest goes on while the indexer is down: the log is the source of truth
    res = svc.ingest_posts([post(f"b{i}", f"during{i} shared") for i in range(30)])
    assert res.accepted == 30
    assert svc.indexer.wait_searchable(res.last_seq, 60)
    h = svc.health()
    assert h["status"] == "ok" and h["indexer_restarts"] == 1 and h["indexer_pid"] != pid
    assert h["index_docs"] == 80  # nothing lost, nothing indexed twice
    assert len(svc.search(SearchQuery(q="shared", limit=100))) == 80
    assert _gone(pid)


def test_indexer_exits_when_its_parent_end_closes(tmp_path):
    """The portable half of dying with the parent (Linux also has PR_SET_PDEATHSIG): the
    child watches its socket and exits at EOF, releasing the index lock."""
    PostLog(tmp_path / "log.sqlite3").close()
    ours, theirs = socket.socketpair()
    cmd = [sys.executable, "-m", "gigafactory.grok.memory.indexer", "--data-dir", str(tmp_path)]
    cmd += ["--fd", str(theirs.fileno()), "--parent-pid", str(os.getpid())]
    proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),))
    theirs.close()
    conn = Connection(ours.detach())
    try:
        assert conn.poll(60), "the indexer process did not report ready"
        msg = conn.recv()
        assert msg[0] == "ready" and msg[3] == proc.pid
        conn.close()  # as if the parent died
        assert proc.wait(10) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            pytest.fail("the indexer outlived its parent's end of the socket")


def test_indexer_that_cannot_start_is_a_typed_error(tmp_path):
    from gigafactory.grok.memory.indexer import IndexerError
    from gigafactory.grok.memory.service import GrokService
    from gigafactory.grok.settings import GrokSettings

    data = tmp_path / "data"
    data.mkdir()
    (data / "index").write_text("not a directory")
    settings = GrokSettings.load({}, data_dir=data, api_keys="k")
    with pytest.raises(IndexerError, match=r"did not start.*exited with code 1"):
        GrokService(settings)


def test_ingest_waits_for_an_index_that_falls_behind(make_service):
    """Back-pressure: with the indexer process alive but stalled (SIGSTOP), a batch waits
    ``max_ingest_hold_s`` for the index and is then accepted anyway; nothing waits while the
    indexer is down or catching up after a restart; once it resumes, ingest is quick again."""
    import signal

    svc = make_service(max_index_lag_s=0.2, max_ingest_hold_s=0.8)
    ingest_and_wait(svc, [post("g0", "gate zero")])
    t0 = time.monotonic()
    ingest_and_wait(svc, [post("g1", "gate one")])
    assert time.monotonic() - t0 < 0.8 and svc.gate.holds == 0  # keeping up: no hold
    os.kill(svc.indexer.pid, signal.SIGSTOP)
    try:
        assert svc.ingest_posts([post("g2", "gate two")]).accepted == 1
        time.sleep(0.3)  # g2 is now older than max_index_lag_s and not searchable
        assert svc.gate.lag_s() > 0.2
        t0 = time.monotonic()
        assert svc.ingest_posts([post("g3", "gate three")]).accepted == 1
        held = time.monotonic() - t0
        assert 0.75 <= held < 5 and svc.gate.holds == 1
        h = svc.health()
        assert h["ingest_holds"] == 1 and h["ingest_held_s"] >= 0.75 and h["index_lag_s"] > 0.2
    finally:
        os.kill(svc.indexer.pid, signal.SIGCONT)
    assert svc.indexer.wait_searchable(svc.log.last_seq, 30)
    t0 = time.monotonic()
    ingest_and_wait(svc, [post("g4", "gate four")])
    assert time.monotonic() - t0 < 0.8 and svc.gate.holds == 1
    # a killed indexer: ingest goes on at once (the log is the source of truth)
    svc.indexer.kill_child()
    assert _wait_until(lambda: not svc.indexer.is_alive(), 5)
    t0 = time.monotonic()
    for i in range(3):
        assert svc.ingest_posts([post(f"d{i}", "down")]).accepted == 1
    assert time.monotonic() - t0 < 0.5 and svc.gate.holds == 1
    assert svc.indexer.wait_searchable(svc.log.last_seq, 60)
    assert len(svc.search(SearchQuery(q="gate", limit=10))) == 5


@pytest.mark.parametrize("bad", ["-1", "nan", "abc", "61"])
def test_index_lag_settings_are_validated(bad):
    from gigafactory.grok.settings import GrokSettings, SettingsError

    with pytest.raises(SettingsError, match="max_index_lag_s"):
        GrokSettings.load({"GROK_MAX_INDEX_LAG_S": bad})
    with pytest.raises(SettingsError, match="max_ingest_hold_s"):
        GrokSettings.load({"GROK_MAX_INGEST_HOLD_S": bad.replace("-1", "0")})
