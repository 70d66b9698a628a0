"""``gigafactory demo``: the library run end to end on short settings, its options (bad values
included), and ``--serve`` keeping the page up until Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gigafactory.cli import main
from gigafactory.grok.demo import (
    AckClock,
    Answered,
    AnswerPiece,
    Asking,
    Demo,
    DemoError,
    DemoOptions,
    Feeding,
    Planned,
    ServiceUp,
    Trending,
    question_about,
    sse_data,
    worth_asking,
)

SHORT = DemoOptions(rate=200, history_s=60, warmup_s=2, questions=2, seed=3)


def _closed(url: str) -> bool:
    parts = urlsplit(url)
    with socket.socket() as s:
        return s.connect_ex((parts.hostname, parts.port)) != 0


@pytest.mark.slow
def test_demo_streams_posts_answers_about_trends_with_fresh_citations_and_plans():
    with Demo(SHORT) as demo:
        events = list(demo.run())
        url, data_dir = demo.url, demo.data_dir
        assert demo.feed_stats.accepted_posts > 60 * 200 * 0.8  # the history, and live posts
    kinds = [type(e) for e in events]
    assert kinds[0] is ServiceUp and kinds[-1] is Planned
    feeding = [e for e in events if isinstance(e, Feeding)]
    assert feeding[-1].live and feeding[-1].stream_s >= SHORT.history_s + SHORT.warmup_s
    assert [e.posts for e in feeding] == sorted(e.posts for e in feeding)
    (trending,) = [e for e in events if isinstance(e, Trending)]
    assert trending.window_s == 60 and trending.terms
    asked = [e for e in events if isinstance(e, Asking)]
    answers = [e for e in events if isinstance(e, Answered)]
    # distinct topics only: a trend whose words an earlier answer quoted is not asked again
    assert 1 <= len(asked) == len(answers) <= SHORT.questions
    terms = [t["term"] for t in trending.terms]
    assert {a.question for a in asked} <= {question_about(t) for t in terms}
    for a in answers:
        assert a.citations and "[1]" in a.text
        # every cited post was fed by this demo, acknowledged before it was cited
        assert all(age is not None and 0 <= age < 120 for age in a.ack_to_cited_s)
        assert a.freshest_s == min(a.ack_to_cited_s)
        assert 0 < a.first_token_ms <= a.total_ms
    pieces = [e.text for e in events if isinstance(e, AnswerPiece)]
    assert "".join(pieces) == "".join(a.text for a in answers)  # streamed piece by piece
    assert len(pieces) > 2 * len(answers)
    plan = events[-1]
    # the best use of the cluster: up to its 100,000 GPUs (the rest hot spares)
    assert plan.step.gpus <= 100_000 and plan.step.fits and 0 < plan.run.goodput < 1
    # the service is stopped and its temporary data directory removed
    assert _closed(url) and not data_dir.exists()


def test_demo_asks_about_terms_an_earlier_answer_has_not_covered():
    assert not worth_asking("drama", {"var", "drama", "vardrama"})
    assert not worth_asking("#VarDrama", {"vardrama"})
    assert worth_asking("reasoning", {"var", "drama"})
    assert not worth_asking("last", set())  # a question word: nothing to search for


def test_sse_data_reads_payloads_until_done():
    lines = iter([": comment", 'data: {"a": 1}', "", "data: [DONE]", 'data: {"after": "done"}'])
    assert list(sse_data(lines)) == [{"a": 1}]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate", 0.0, "positive number of posts"),
        ("rate", float("nan"), "positive number of posts"),
        ("history_s", -1.0, "0 to 3600 seconds"),
        ("warmup_s", 0.5, "at least 1 second"),
        ("questions", 0, "between 1 and 10"),
        ("questions", 11, "between 1 and 10"),
        ("port", 70000, r"0 \(any free port\) or 1-65535"),
        ("timeout_s", 0.0, "positive number of seconds"),
    ],
)
def test_demo_options_refuse_bad_values(field, value, message):
    with pytest.raises(DemoError, match=message):
        DemoOptions(**{field: value})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "-5"], "rate -5.0: give a positive number"),
        (["--history", "4000"], "history 4000.0: give 0 to 3600"),
        (["--warmup", "0"], "warmup 0.0: give at least 1 second"),
        (["--questions", "0"], "questions 0: ask between 1 and 10"),
        (["--port", "-1"], "port -1: give 0"),
    ],
)
def test_cli_demo_bad_option_is_one_red_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_cli_demo_seed_must_be_a_number(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--seed", "abc"])
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def test_demo_port_in_use_is_refused_and_leaves_nothing_behind():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        demo = Demo(DemoOptions(port=s.getsockname()[1]))
        assert demo.data_dir.is_dir()
        with pytest.raises(DemoError, match="pass --port 0 for a free port"), demo:
            pass
        assert not demo.data_dir.exists()


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_cli_demo_serve_prints_the_page_url_and_stops_on_ctrl_c_or_term(stop):
    cmd = [sys.executable, "-X", "faulthandler", "-c", "from gigafactory.cli import main; main()"]
    cmd += ["demo", "--serve", "--rate", "100", "--history", "30", "--warmup", "1"]
    cmd += ["--questions", "1"]
    cmd += ["--seed", "5"]
    env = {**os.environ, "COLUMNS": "200"}
    # started as a non-interactive shell starts a background job (SIGINT ignored, inherited
    # through exec): Ctrl-C must still stop it
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, f"demo exited early: {''.join(lines)}"
            lines.append(line)
            if line.startswith("page:"):
                break
        out = "".join(lines)
        assert "? What is happening with" in out and "acknowledged" in out
        assert "the run that would train Grok" in out and "MFU" in out
        page = lines[-1].split()[1]  # http://127.0.0.1:PORT/#key=K&window=1m
        base, fragment = page.split("/#")
        key = dict(p.split("=") for p in fragment.split("&"))["key"]
        assert httpx.get(base + "/").status_code == 200
        status = base + "/v1/status"
        before = httpx.get(status, headers={"x-api-key": key}).json()["log_seq"]
        time.sleep(1.5)
        assert httpx.get(status, headers={"x-api-key": key}).json()["log_seq"] > before
        r = httpx.get(base + "/v1/trends", params={"window": "1m"}, headers={"x-api-key": key})
        assert r.status_code == 200 and r.json()["trends"]
        data_dir = re.search(r"data in (\S+),", out).group(1)
        assert Path(data_dir).is_dir()
        proc.send_signal(stop)
        try:
            assert proc.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:  # say where it stuck: its threads, then its output
            os.kill(proc.pid, signal.SIGABRT)  # faulthandler (-X faulthandler) dumps stacks
            proc.wait(10)
            pytest.fail(f"the demo did not stop in 30 s:\n{proc.stdout.read()[-6000:]}")
        assert _closed(base) and not Path(data_dir).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_ack_clock_remembers_recent_acks_only(tmp_path):
    from gigafactory.grok.memory.feed import FeedStats

    from .conftest import post

    with Demo(DemoOptions(), data_dir=tmp_path / "d") as demo:
        clock = AckClock(demo.url, demo.key, keep_s=0.3)
        try:
            stats = FeedStats()
            clock.send("posts", [post("old1", "first"), post("old2", "second")], stats)
            assert set(clock.acked) == {"old1", "old2"}
            time.sleep(0.5)
            before = time.monotonic()
            clock.send("posts", [post("new1", "third")], stats)
            assert set(clock.acked) == {"new1"} and clock.acked["new1"] >= before
            assert stats.accepted_posts == 3
        finally:
            clock.close()
