"""The module built from a ModelSpec, held to the planner: parameters exactly, FLOPs within 2%."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gigafactory.plan.flops import forward_flops_per_token, training_flops_per_token
from gigafactory.plan.params import total_params
from gigafactory.spec import ModelSpec, load_model
from gigafactory.train.errors import UnsupportedModelError
from gigafactory.train.model import MoE, Transformer, attention_mask, load_balancing_loss


@pytest.mark.parametrize("name", ["grok-mini", "grok-mini-dense"])
def test_param_count_equals_planner_small(name):
    spec = load_model(name)
    assert Transformer(spec).num_params() == total_params(spec)


@pytest.mark.parametrize(
    "name",
    [
        "grok-1",
        "llama3-8b",
        "mixtral-8x7b",
        "gpt3-175b",
        "gpt-oss-120b",
        "grok-1b-dense",
        "grok-1b-moe",
    ],
)
def test_param_count_equals_planner_meta(name):
    spec = load_model(name)
    with torch.device("meta"):
        model = Transformer(spec)
    assert model.num_params() == total_params(spec)


def _measured_flops_per_token(spec: ModelSpec, T: int, train: bool) -> float:
    torch.manual_seed(0)
    model, B = Transformer(spec), 2
    x = torch.randint(0, spec.vocab, (B, T))
    # CPU SDPA kernels are not in the FLOP counter's table; the math backend is (as bmm)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        out = model(x, x)
        if train:
            (out.loss + out.aux_loss).backward()
    return counter.get_total_flops() / (B * T)


@pytest.mark.parametrize("name", ["grok-mini", "grok-mini-dense"])
@pytest.mark.parametrize("softcap", [True, False], ids=["explicit-softcap", "sdpa"])
@pytest.mark.parametrize("train", [False, True], ids=["forward", "training"])
def test_flop_counter_matches_planner(name, softcap, train):
    spec = load_model(name)
    if not softcap:
        spec = spec.replace(attn_logit_softcap=0.0)
    T = 128
    planned = (training_flops_per_token if train else forward_flops_per_token)(spec, T)
    # the counter counts SDPA/QKᵀ as the full s×s product: the planner's causal=False
    assert forward_flops_per_token(spec, T, causal=False) == pytest.approx(
        _measured_flops_per_token(spec, T, False), rel=0.02
    )
    assert _measured_flops_per_token(spec, T, train) == pytest.approx(planned, rel=0.02)


def test_mla_and_alibi_are_refused_with_the_reason():
    with pytest.raises(UnsupportedModelError, match="MLA is planned-only"):
        Transformer(load_model("deepseek-v3"))
    spec = load_model("grok-mini-dense").replace(position="alibi")
    with pytest.raises(UnsupportedModelError, match="ALiBi"):
        Transformer(spec)


def _moe_spec(**changes) -> ModelSpec:
    return load_model("grok-mini").replace(hidden=32, heads=4, kv_heads=2, moe_ffn=24, **changes)


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("shared", [0, 1])
def test_moe_dispatch_equals_a_per_token_loop(renormalize, shared):
    torch.manual_seed(0)
    spec = _moe_spec(moe_renormalize=renormalize, shared_experts=shared)
    moe = MoE(spec)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 5, spec.hidden)
    y, _ = moe(x)
    probs = torch.softmax(x.reshape(-1, spec.hidden) @ moe.router.weight.T, -1)
    for n, token in enumerate(x.reshape(-1, spec.hidden)):
        gates, idx = probs[n].topk(spec.top_k)
        if not renormalize:
            assert gates.sum() < 1  # Grok-1: top-k of a softmax over all experts, as is
        else:
            gates = gates / gates.sum()
        want = sum(
            g * moe.experts.expert(int(e), token[None])[0] for g, e in zip(gates, idx, strict=True)
        )
        want = want + sum((s(token[None])[0] for s in moe.shared), torch.zeros(spec.hidden))
        torch.testing.assert_close(y.reshape(-1, spec.hidden)[n], want, rtol=1e-5, atol=1e-5)


def test_load_balancing_loss_is_one_when_uniform_and_grows_when_skewed():
    E, N = 4, 8
    uniform = torch.full((N, E), 1 / E)
    idx = torch.arange(N * 2).reshape(N, 2) % E
    assert load_balancing_loss(uniform, idx, E).item() == pytest.approx(1.0)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(N, 1)
    all_first = torch.tensor([[0, 1]]).repeat(N, 1)
    assert load_balancing_loss(skewed, all_first, E).item() > 1.0


def test_softcap_path_equals_sdpa_when_the_cap_does_not_bite():
    torch.manual_seed(0)
    capped = load_model("grok-mini-dense").replace(attn_logit_softcap=1e6, layers=2)
    a = Transformer(capped)
    b = Transformer(capped.replace(attn_logit_softcap=0.0))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, capped.vocab, (2, 32))
    torch.testing.assert_close(a(x).logits, b(x).logits, rtol=1e-4, atol=1e-4)


def test_causal_sliding_window_mask():
    mask = attention_mask(5, window=2, device=torch.device("cpu"))
    assert mask.tolist()[4] == [False, False, False, True, True]
    assert not mask[0, 1]


def test_grok_traits_are_built():
    spec = load_model("grok-mini")
    model = Transformer(spec)
    assert model.lm_head is None  # tied: the head is the embedding
    norms = [n for n, _ in model.named_parameters() if n.startswith("blocks.0.") and "norm" in n]
    assert len(norms) == 4  # sandwich: pre and post norm around attention and around the MoE
    x = torch.randint(0, spec.vocab, (1, 16))
    out = model(x, x)
    assert out.aux_loss.item() > 0  # the MoE load-balancing loss is part of the objective
    dense = Transformer(load_model("grok-mini-dense"))
    assert dense(x, x).aux_loss.item() == 0


def test_flex_softcap_path_equals_the_explicit_one():
    """The GPU path (FlexAttention, run here in eager mode) computes the same attention."""
    import warnings

    from gigafactory.train.model import Attention, attention_mask, flex_capped_attention

    torch.manual_seed(0)
    spec = load_model("grok-mini").replace(attn_logit_softcap=2.0)
    q, k, v = torch.randn(2, 8, 24, 32), torch.randn(2, 2, 24, 32), torch.randn(2, 2, 24, 32)
    for window in (0, 5):
        attn = Attention(spec, window=window)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager flex_attention warns it is not compiled
            got = flex_capped_attention(q * 3, k * 3, v, 2.0, window)
        mask = attention_mask(24, window, q.device)
        torch.testing.assert_close(got, attn._capped_attention(q * 3, k * 3, v, mask))


@pytest.mark.parametrize("name", ["grok-mini", "grok-mini-dense"])
def test_bf16_autocast_trains_with_fp32_router_and_loss(name):
    spec = load_model(name).replace(layers=2)
    model = Transformer(spec)
    x = torch.randint(0, spec.vocab, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, x)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    (out.loss + out.aux_loss).backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("variant", ["moe", "dense", "window", "learned"])
def test_kv_cache_decoding_equals_the_full_forward(variant):
    """Prefill 7 tokens, then feed the rest one at a time through the cache: every position's
    logits equal those of one forward pass over the whole sequence."""
    from pathlib import Path

    here = Path(__file__).parent
    spec = load_model(str(here / ("tiny-moe.yaml" if variant == "moe" else "tiny-dense.yaml")))
    if variant == "window":  # every other layer local, 4-token window, soft-capped
        spec = spec.replace(sliding_window=4, attn_logit_softcap=20.0)
    if variant == "learned":
        spec = spec.replace(position="learned")
    torch.manual_seed(0)
    model = Transformer(spec).eval()
    idx = torch.randint(0, spec.vocab, (2, 20))
    with torch.no_grad():
        full = model(idx).logits  # (2, 20, V)
        cache = model.new_cache()
        steps = [model(idx[:, :7], cache=cache).logits]
        steps += [model(idx[:, t : t + 1], cache=cache).logits for t in range(7, 20)]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="longer than seq_len"):
        model(torch.zeros(1, spec.seq_len - 19, dtype=torch.long), cache=cache)
