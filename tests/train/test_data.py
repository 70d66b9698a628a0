"""Tokenizer, token shards prepared once, the loader's per-rank slices and position, bad data."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gigafactory.train.data import Corpus, TokenLoader, prepare
from gigafactory.train.errors import DataError
from gigafactory.train.tokenizer import EOT, load_tokenizer


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    return prepare(Corpus(posts=1500, seed=3), run, vocab=512)


def test_tokenizer_is_byte_level_and_lossless(prepared):
    tok = load_tokenizer(prepared.tokenizer_path)
    assert tok.get_vocab_size() <= 512
    text = "Grok ✓ Colossus 🚀 — naïve café, 東京 #AI @xai\n\ttabs"
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.token_to_id(EOT) is not None


def test_shards_are_prepared_once_and_memory_mapped(prepared, tmp_path):
    arrays = prepared.arrays()
    assert isinstance(arrays[0], np.memmap) and arrays[0].dtype == np.uint16
    assert sum(a.size for a in arrays) == prepared.tokens > 10_000
    assert prepared.documents == 1500
    mtime = prepared.shards[0].stat().st_mtime_ns
    again = prepare(Corpus(posts=1500, seed=3), prepared.root.parent, vocab=512)
    assert again.reused and again.shards[0].stat().st_mtime_ns == mtime
    other = prepare(Corpus(posts=1400, seed=3), prepared.root.parent, vocab=512)
    assert not other.reused and other.documents == 1400  # a different corpus is redone


def _rows(loader: TokenLoader) -> list[list[int]]:
    return [row for x, y in loader.next_batch() for row in x.tolist()]


def test_dp_ranks_split_the_global_batch_and_targets_shift_by_one(prepared):
    single = TokenLoader(prepared, seq_len=32, global_batch=8, micro_batch=8, seed=1)
    ranks = [TokenLoader(prepared, 32, 8, micro_batch=2, dp=2, dp_rank=r, seed=1) for r in range(2)]
    for _ in range(3):
        whole = _rows(single)
        parts = [_rows(r) for r in ranks]
        assert parts[0] + parts[1] == whole
    x, y = single.next_batch()[0]
    assert x.shape == (8, 32) and (x[:, 1:] == y[:, :-1]).all()


def test_loader_position_round_trips(prepared):
    a = TokenLoader(prepared, 32, 8, 4, seed=2)
    for _ in range(5):
        a.next_batch()
    b = TokenLoader(prepared, 32, 8, 4, seed=2)
    b.load_state_dict(a.state_dict())
    assert _rows(a) == _rows(b)
    # epochs wrap with a new permutation
    small = TokenLoader(prepared, 32, 8, 8, seed=2)
    steps = small.samples // 8 + 1
    for _ in range(steps):
        small.next_batch()
    assert small.state_dict()["epoch"] == 1


def test_loader_refuses_a_corpus_smaller_than_one_batch(prepared):
    with pytest.raises(DataError, match="fewer than one global batch"):
        TokenLoader(prepared, 64, global_batch=100_000, micro_batch=1)


def test_user_files_txt_jsonl_parquet(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("first paragraph\n\nsecond paragraph\n\n\n")
    (tmp_path / "d" / "b.jsonl").write_text(
        json.dumps({"text": "from jsonl"}) + "\n\n" + json.dumps({"other": 1}) + "\n"
    )
    pq.write_table(pa.table({"text": ["from parquet", None]}), tmp_path / "d" / "c.parquet")
    (tmp_path / "d" / "ignored.bin").write_bytes(b"\x00\x01")
    docs = list(Corpus(tmp_path / "d").texts())
    assert docs == ["first paragraph", "second paragraph", "from jsonl", "from parquet"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing.txt", "does not exist"),
        (lambda p: (p / "e").mkdir() or p / "e", "holds no usable text files"),
        (lambda p: (p / "x.csv").write_text("a,b") and p / "x.csv", "unsupported type"),
        (lambda p: (p / "empty.txt").write_text("\n\n  \n") and p / "empty.txt", "no usable text"),
        (lambda p: (p / "n.jsonl").write_text('{"body": "x"}\n') and p / "n.jsonl", "no usable"),
        (lambda p: (p / "bad.jsonl").write_text("{not json\n") and p / "bad.jsonl", "not JSON"),
        (lambda p: (p / "l.txt").write_bytes(b"\xff\xfe\xfa") and p / "l.txt", "not UTF-8"),
        (
            lambda p: pq.write_table(pa.table({"body": ["x"]}), p / "t.parquet") or p / "t.parquet",
            "no 'text' column",
        ),
    ],
    ids=["missing", "empty-dir", "csv", "blank-txt", "no-field", "bad-json", "latin1", "no-col"],
)
def test_unusable_data_is_one_clear_error(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(DataError, match=match) as err:
        prepare(Corpus(path), tmp_path / "run", vocab=512)
    assert "\n" not in str(err.value)
