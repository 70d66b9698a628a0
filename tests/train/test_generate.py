"""Sampling with the KV cache: the same tokens as re-running the whole context every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gigafactory.spec import load_model
from gigafactory.train.export import generate, sample_next
from gigafactory.train.model import Transformer
from gigafactory.train.tokenizer import EOT, train_tokenizer

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def tok():
    texts = [f"post {i}: the launch window opens at dawn, #space {i * 7}" for i in range(300)]
    return train_tokenizer(texts, vocab_size=512)


def reference(model: Transformer, tok, prompt: str, n: int, temperature: float) -> str:
    """Decode without a cache: the whole context through the model for every token. Like
    ``generate``, never show a trailing incomplete UTF-8 character."""
    gen = torch.Generator().manual_seed(3)
    ids, new = tok.encode(prompt).ids, []
    for _ in range(n):
        logits = model(torch.tensor([ids[-model.spec.seq_len :]])).logits[0, -1]
        token = sample_next(logits, temperature, 0.9, gen)
        if token == tok.token_to_id(EOT):
            break
        ids.append(token)
        new.append(token)
    shown = [tok.decode(new[:i]) for i in range(len(new) + 1)]
    return [t for t in shown if not t.endswith("\ufffd")][-1]


@pytest.mark.parametrize("name", ["tiny-moe.yaml", "tiny-dense.yaml"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_full_recompute(tok, name, temperature):
    torch.manual_seed(0)
    model = Transformer(load_model(str(HERE / name))).eval()
    prompt, n = "the launch window", 30  # prompt + 30 tokens stay inside seq_len = 64
    with torch.no_grad():
        want = reference(model, tok, prompt, n, temperature)
    got = "".join(generate(model, tok, prompt, n, temperature, top_p=0.9, seed=3))
    assert got == want and len(got) > 0


def test_generation_runs_past_the_context_length(tok):
    """More tokens than seq_len: one position per token through the cache until the context
    is full, then the newest half re-encoded; never longer than seq_len, no error."""
    torch.manual_seed(0)
    spec = load_model(str(HERE / "tiny-dense.yaml")).replace(seq_len=16)
    model = Transformer(spec).eval()
    eot, fed = tok.token_to_id(EOT), []

    def no_eot(module, args, kwargs, out):  # so that all 60 tokens are produced
        fed.append((args[0].size(1), kwargs["cache"].length))
        out.logits[..., eot] = float("-inf")
        return out

    model.register_forward_hook(no_eot, with_kwargs=True)
    list(generate(model, tok, "post 1", 60, temperature=1.0, top_p=1.0, seed=0))
    assert sum(1 for t, _ in fed if t == 1) + sum(1 for t, _ in fed[1:] if t > 1) == 60
    assert max(length for _, length in fed) == 16  # the cache filled up ...
    assert sum(1 for t, _ in fed[1:] if t == 8) >= 5  # ... and was re-encoded from 8 tokens
