"""A byte-level BPE tokenizer (GPT-2 style, Radford et al. 2019) trained locally with the
Hugging Face ``tokenizers`` library and saved with the run as ``tokenizer.json``.

Byte-level means every string is representable: the 256 byte symbols are the initial alphabet,
so no text is ever mapped to an unknown token. Documents are separated by ``<|endoftext|>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from gigafactory.train.errors import DataError

EOT = "<|endoftext|>"
BYTE_ALPHABET = 256
TRAIN_SAMPLE_CHARS = 50_000_000  # BPE merges are learned on the first ~50 MB of text


def min_vocab() -> int:
    """The smallest vocabulary a byte-level BPE can have: 256 bytes plus the EOT token."""
    return BYTE_ALPHABET + 1


def _sample(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    seen = 0
    for text in texts:
        yield text
        seen += len(text)
        if seen >= max_chars:
            return


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, max_chars: int = TRAIN_SAMPLE_CHARS
) -> Tokenizer:
    """Learn BPE merges on ``texts`` (up to ``max_chars`` characters) for at most ``vocab_size``
    tokens. A small corpus may yield fewer tokens than asked; never more."""
    if vocab_size < min_vocab():
        raise DataError(
            f"vocab {vocab_size} is too small for a byte-level BPE; use a model with "
            f"vocab >= {min_vocab()}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_sample(texts, max_chars), trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write ``tokenizer.json`` atomically (temp file, then rename)."""
    tmp = path.with_suffix(".json.tmp")
    tok.save(str(tmp))
    tmp.replace(path)


def load_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise DataError(f"no tokenizer at {path}; train a model first (gigafactory train)")
    return Tokenizer.from_file(str(path))


def eot_id(tok: Tokenizer) -> int:
    token_id = tok.token_to_id(EOT)
    if token_id is None:
        raise DataError(f"tokenizer has no {EOT} token; retrain it with gigafactory train")
    return token_id
