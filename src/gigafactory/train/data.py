"""Training data: a corpus, prepared once into memory-mapped token shards, read by a loader
whose position is part of the checkpoint.

* ``Corpus``: the generated social posts of ``gigafactory.grok.memory.generator`` (the default, made
  locally from a seed, nothing downloaded) or the user's ``.txt``/``.md``, ``.jsonl`` and
  ``.parquet`` files (a file or a folder of them).
* ``prepare``: trains the byte-level BPE (``tokenizer.py``) and writes ``shard_NNNNN.bin``
  files of token ids (uint16, or uint32 past 65,536 tokens) plus ``meta.json``, written last
  as the marker that preparation finished. A second run with the same corpus reuses them.
* ``TokenLoader``: sequences of ``seq_len + 1`` tokens cut from the shards, shuffled once per
  epoch with a seeded permutation. Step t takes the global batch at ``cursor``; DP rank r
  takes its contiguous slice, cut into micro-batches. The position (epoch, cursor) is global,
  so a run resumes exactly, and can even resume with another number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gigafactory.train.errors import DataError
from gigafactory.train.tokenizer import eot_id, save_tokenizer, train_tokenizer

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
SHARD_TOKENS = 1 << 24  # 16M tokens (32 MB as uint16) per shard
ENCODE_BATCH = 1000  # documents per tokenizers.encode_batch call
FIX = "give .txt/.md files, .jsonl with a '{field}' field, or .parquet with a '{field}' column"


# --- the corpus ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Where the text comes from. ``path`` None means the generated default corpus."""

    path: Path | None = None
    posts: int = 20_000
    seed: int = 0
    text_field: str = "text"

    def describe(self) -> str:
        if self.path is None:
            return f"{self.posts:,} generated posts (seed {self.seed})"
        return str(self.path)

    def files(self) -> list[Path]:
        """The files of a user corpus, sorted; a clear error if there are none to read."""
        assert self.path is not None
        fix = FIX.format(field=self.text_field)
        if not self.path.exists():
            raise DataError(f"data path {self.path} does not exist; {fix}")
        if self.path.is_file():
            if self.path.suffix.lower() not in SUPPORTED:
                raise DataError(f"{self.path} has an unsupported type; {fix}")
            return [self.path]
        found = sorted(
            p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED
        )
        if not found:
            raise DataError(f"{self.path} holds no usable text files; {fix}")
        return found

    def fingerprint(self) -> str:
        """Changes whenever the text would: generator settings, or file names, sizes, times."""
        h = hashlib.sha256()
        if self.path is None:
            h.update(f"generated-posts:{self.posts}:{self.seed}".encode())
        else:
            h.update(self.text_field.encode())
            for f in self.files():
                st = f.stat()
                h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def texts(self) -> Iterator[str]:
        """Every non-empty document, in a fixed order (a fresh iterator on each call)."""
        if self.path is None:
            yield from _generated_posts(self.posts, self.seed)
            return
        for f in self.files():
            suffix = f.suffix.lower()
            if suffix in TEXT_SUFFIXES:
                docs = _text_documents(f)
            elif suffix in JSONL_SUFFIXES:
                docs = _jsonl_documents(f, self.text_field)
            else:
                docs = _parquet_documents(f, self.text_field)
            yield from (d for d in docs if d.strip())


def _generated_posts(n: int, seed: int) -> Iterator[str]:
    try:
        from gigafactory.grok.memory.generator import post_texts
    except ImportError as exc:  # the feed part provides the generator
        raise DataError(
            "the default corpus needs gigafactory.grok.memory.generator, which is not installed; "
            "pass --data PATH with your own text"
        ) from exc
    yield from post_texts(n, seed=seed)


def _text_documents(path: Path) -> Iterator[str]:
    """A plain-text file: one document per paragraph (blank-line separated)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text; convert it or leave it out of --data") from exc
    yield from text.split("\n\n")


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    try:
        yield from _jsonl_rows(path, field)
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.start} of a line cannot be decoded); give "
            "one UTF-8 JSON object per line"
        ) from exc


def _jsonl_rows(path: Path, field: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{path} line {n} is not JSON; give one JSON object per line"
                ) from exc
            value = row.get(field) if isinstance(row, dict) else None
            if isinstance(value, str):
                yield value


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path} is not a readable Parquet file: {exc}") from exc
    if field not in pf.schema_arrow.names:
        raise DataError(
            f"{path} has no '{field}' column (it has {', '.join(pf.schema_arrow.names)}); "
            "pass --text-field with the column that holds the text"
        )
    for batch in pf.iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value


# --- preparation: tokenizer and token shards -----------------------------------------------


@dataclass(frozen=True)
class PreparedData:
    """Token shards on disk and the tokenizer that made them."""

    root: Path
    tokenizer_path: Path
    shards: tuple[Path, ...]
    tokens: int
    documents: int
    dtype: str
    fingerprint: str
    reused: bool

    def arrays(self) -> list[np.memmap]:
        return [np.memmap(p, dtype=self.dtype, mode="r") for p in self.shards]


def token_dtype(vocab: int) -> str:
    return "uint16" if vocab <= 1 << 16 else "uint32"


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _read_meta(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare(corpus: Corpus, run_dir: Path, vocab: int) -> PreparedData:
    """Train the tokenizer and write token shards under ``run_dir`` unless a finished
    preparation of the same corpus is already there. Call on one rank only."""
    data_dir, tok_path = run_dir / "data", run_dir / "tokenizer.json"
    fingerprint = corpus.fingerprint()
    meta = _read_meta(data_dir)
    if (
        meta is not None
        and meta.get("fingerprint") == fingerprint
        and tok_path.is_file()
        and meta.get("tokenizer_sha") == _file_sha(tok_path)
        and all((data_dir / s["file"]).is_file() for s in meta["shards"])
    ):
        return _prepared(data_dir, tok_path, meta, reused=True)

    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "meta.json").unlink(missing_ok=True)  # the marker goes first, comes back last
    documents = 0

    def counted() -> Iterator[str]:
        nonlocal documents
        for text in corpus.texts():
            documents += 1
            yield text

    tok = train_tokenizer(counted(), vocab)
    if documents == 0:
        raise DataError(
            f"{corpus.describe()} holds no usable text; {FIX.format(field=corpus.text_field)}"
        )
    save_tokenizer(tok, tok_path)
    dtype = token_dtype(vocab)
    shards = _write_shards(corpus, tok, data_dir, dtype)
    meta = {
        "fingerprint": fingerprint,
        "corpus": corpus.describe(),
        "tokenizer_sha": _file_sha(tok_path),
        "vocab": tok.get_vocab_size(),
        "dtype": dtype,
        "documents": shards[1],
        "shards": shards[0],
    }
    tmp = data_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(data_dir / "meta.json")
    return _prepared(data_dir, tok_path, meta, reused=False)


def _write_shards(
    corpus: Corpus, tok: Any, data_dir: Path, dtype: str
) -> tuple[list[dict[str, Any]], int]:
    eot = eot_id(tok)
    shards: list[dict[str, Any]] = []
    buffer: list[np.ndarray] = []
    buffered = documents = 0

    def flush() -> None:
        nonlocal buffer, buffered
        name = f"shard_{len(shards):05d}.bin"
        arr = np.concatenate(buffer).astype(dtype)
        tmp = data_dir / f"{name}.tmp"
        with tmp.open("wb") as f:
            f.write(arr.tobytes())
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(data_dir / name)
        shards.append({"file": name, "tokens": int(arr.size)})
        buffer, buffered = [], 0

    batch: list[str] = []
    texts = corpus.texts()
    while True:
        batch = [t for _, t in zip(range(ENCODE_BATCH), texts, strict=False)]
        if not batch:
            break
        for enc in tok.encode_batch(batch):
            buffer.append(np.asarray([*enc.ids, eot], dtype=np.int64))
            buffered += len(enc.ids) + 1
            documents += 1
        if buffered >= SHARD_TOKENS:
            flush()
    if buffered:
        flush()
    return shards, documents


def _prepared(data_dir: Path, tok_path: Path, meta: dict[str, Any], reused: bool) -> PreparedData:
    return PreparedData(
        root=data_dir,
        tokenizer_path=tok_path,
        shards=tuple(data_dir / s["file"] for s in meta["shards"]),
        tokens=sum(s["tokens"] for s in meta["shards"]),
        documents=meta["documents"],
        dtype=meta["dtype"],
        fingerprint=meta["fingerprint"],
        reused=reused,
    )


def load_prepared(run_dir: Path) -> PreparedData:
    """The shards another rank prepared (after a barrier)."""
    meta = _read_meta(run_dir / "data")
    if meta is None:
        raise DataError(f"{run_dir / 'data'} has no finished preparation; run the trainer again")
    return _prepared(run_dir / "data", run_dir / "tokenizer.json", meta, reused=True)


# --- the loader ----------------------------------------------------------------------------


class TokenLoader:
    """Batches of (inputs, targets) for one data-parallel rank; see the module docstring.

    ``next_batch`` returns this rank's micro-batches of step t: global_batch/dp sequences,
    cut into micro-batches of ``micro_batch``. Sample i is tokens [i·s, i·s + s + 1) of a shard.
    """

    def __init__(
        self,
        data: PreparedData,
        seq_len: int,
        global_batch: int,
        micro_batch: int,
        dp: int = 1,
        dp_rank: int = 0,
        seed: int = 0,
        device: torch.device | str = "cpu",
    ):
        self.arrays = data.arrays()
        self.seq_len, self.global_batch, self.micro_batch = seq_len, global_batch, micro_batch
        self.dp, self.dp_rank, self.seed, self.device = dp, dp_rank, seed, torch.device(device)
        per_shard = [max(0, (a.size - 1) // seq_len) for a in self.arrays]
        self.starts = np.cumsum([0, *per_shard])  # sample index where each shard begins
        self.samples = int(self.starts[-1])
        if self.samples < global_batch:
            raise DataError(
                f"the corpus has {data.tokens:,} tokens = {self.samples} sequences of "
                f"{seq_len + 1}, fewer than one global batch of {global_batch}; add text "
                "(--data, or more --posts) or lower --batch/--seq"
            )
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.samples)
            self._perm_epoch = epoch
        return self._perm

    def sample(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self.starts, i, side="right") - 1)
        offset = (i - int(self.starts[shard])) * self.seq_len
        return np.asarray(self.arrays[shard][offset : offset + self.seq_len + 1], dtype=np.int64)

    def next_batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.cursor + self.global_batch > self.samples:
            self.epoch, self.cursor = self.epoch + 1, 0
        per_rank = self.global_batch // self.dp
        first = self.cursor + self.dp_rank * per_rank
        ids = self.permutation(self.epoch)[first : first + per_rank]
        self.cursor += self.global_batch
        rows = torch.from_numpy(np.stack([self.sample(int(i)) for i in ids]))  # (b, s+1)
        rows = rows.to(self.device, non_blocking=True)
        return [
            (chunk[:, :-1], chunk[:, 1:]) for chunk in rows.split(self.micro_batch)
        ]  # [(mb, s), (mb, s)] per micro-batch

    def state_dict(self) -> dict[str, int]:
        """The position: global (epoch, cursor), and where this DP rank reads next."""
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "dp": self.dp,
            "dp_rank": self.dp_rank,
            "rank_offset": self.dp_rank * (self.global_batch // self.dp),
            "global_batch": self.global_batch,
            "seq_len": self.seq_len,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seq_len"] != self.seq_len:
            raise DataError(
                f"the checkpoint was taken with --seq {state['seq_len']}; resume with that "
                "value, or start a new run with --out"
            )
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
