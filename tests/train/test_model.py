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
from gigafactory.train.metrics import flop_counter_mapping
from gigafactory.train.model import (
    MoE,
    Transformer,
    activation,
    attention_mask,
    dense_grouped_linear,
    expert_counts,
    load_balancing_loss,
)


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
    with (
        sdpa_kernel(SDPBackend.MATH),
        FlopCounterMode(display=False, custom_mapping=flop_counter_mapping()) as counter,
    ):
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


def reference_expert(experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e of an ``Experts`` module applied to x (n, C), one plain matmul at a time."""

    def bias(name: str) -> torch.Tensor | float:
        b = getattr(experts, name)
        return 0.0 if b is None else b[e]

    up = x @ experts.w_up[e] + bias("b_up")
    if experts.w_gate is not None:
        hidden = activation(experts.kind, x @ experts.w_gate[e] + bias("b_gate")) * up
    else:
        hidden = activation(experts.kind, up)
    return hidden @ experts.w_down[e] + bias("b_down")


class LoopExperts(torch.nn.Module):
    """The trainer's former dispatch, kept as the reference: a host sync on
    ``bincount().tolist()`` and a Python loop over experts."""

    def __init__(self, experts):
        super().__init__()
        self.inner = experts

    def forward(self, x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        chunks = x.split(counts.tolist())
        return torch.cat([reference_expert(self.inner, e, c) for e, c in enumerate(chunks)])


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
            g * reference_expert(moe.experts, int(e), token[None])[0]
            for g, e in zip(gates, idx, strict=True)
        )
        want = want + sum((s(token[None])[0] for s in moe.shared), torch.zeros(spec.hidden))
        torch.testing.assert_close(y.reshape(-1, spec.hidden)[n], want, rtol=1e-5, atol=1e-5)


def test_load_balancing_loss_is_one_when_uniform_and_grows_when_skewed():
    E, N = 4, 8
    uniform = torch.full((N, E), 1 / E)
    idx = torch.arange(N * 2).reshape(N, 2) % E
    assert load_balancing_loss(uniform, expert_counts(idx, E)).item() == pytest.approx(1.0)
    skewed = torch.tensor([[0.7, 0.1, 0.1, 0.1]]).repeat(N, 1)
    all_first = torch.tensor([[0, 1]]).repeat(N, 1)
    assert load_balancing_loss(skewed, expert_counts(all_first, E)).item() > 1.0
    assert (
        expert_counts(all_first, E).tolist()
        == torch.bincount(all_first.flatten(), minlength=E).tolist()
    )


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


@pytest.mark.parametrize("variant", ["geglu", "bias", "relu2"])
def test_grouped_gemm_experts_equal_the_loop_over_experts(variant):
    """Outputs and every gradient of the grouped-GEMM MoE equal the per-expert loop's."""
    changes = {"bias": {"bias": True}, "relu2": {"mlp": "relu2"}}.get(variant, {})
    spec = _moe_spec(**changes)
    torch.manual_seed(0)
    grouped = MoE(spec)
    for p in grouped.parameters():
        torch.nn.init.normal_(p, std=0.2)
    looped = MoE(spec)
    looped.load_state_dict(grouped.state_dict())
    looped.experts = LoopExperts(looped.experts)
    x = torch.randn(3, 7, spec.hidden)
    (ya, aux_a), (yb, aux_b) = grouped(x), looped(x)
    torch.testing.assert_close(ya, yb)
    torch.testing.assert_close(aux_a, aux_b)
    r = torch.randn_like(ya)
    ((ya * r).sum() + aux_a).backward()
    ((yb * r).sum() + aux_b).backward()
    loop_grads = dict(looped.named_parameters())
    for name, p in grouped.named_parameters():
        other = loop_grads[name.replace("experts.", "experts.inner.")]
        torch.testing.assert_close(p.grad, other.grad, msg=name)


def test_grouped_gemm_training_reaches_the_losses_of_the_loop(tiny_moe_spec):
    """Five AdamW steps of the tiny Grok: the same losses with grouped GEMMs as with the loop."""

    def losses(loop: bool) -> list[float]:
        torch.manual_seed(0)
        model = Transformer(tiny_moe_spec)
        if loop:
            for block in model.blocks:
                block.mlp.experts = LoopExperts(block.mlp.experts)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        x = torch.randint(0, tiny_moe_spec.vocab, (4, 32), generator=torch.Generator())
        out = []
        for _ in range(5):  # one batch, learnt by heart
            o = model(x, x.roll(-1, 1))
            (o.loss + o.aux_loss).backward()
            opt.step()
            opt.zero_grad()
            out.append(o.loss.item())
        return out

    grouped, looped = losses(False), losses(True)
    assert grouped[-1] < grouped[0]
    assert grouped == pytest.approx(looped, abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_a_compiled_moe_block_has_no_graph_break(tiny_moe_spec, dtype):
    """No host sync in the MoE forward: Dynamo traces a whole block as one graph (grouped_mm
    in bf16; in fp32, which grouped_mm's meta kernel refuses, the dense fallback)."""
    import torch._dynamo

    torch._dynamo.reset()
    model = Transformer(tiny_moe_spec).to(dtype)
    block = model.blocks[0]
    assert block.is_moe
    x = torch.randn(2, 16, tiny_moe_spec.hidden, dtype=dtype)
    explained = torch._dynamo.explain(block)(x, model.rope_cos, model.rope_sin)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    # and the loop it replaces does break the graph (so the check above can fail)
    torch._dynamo.reset()
    block.mlp.experts = LoopExperts(block.mlp.experts)
    assert torch._dynamo.explain(block)(x, model.rope_cos, model.rope_sin).graph_break_count > 0


def test_dense_fallback_equals_grouped_mm():
    torch.manual_seed(0)
    counts = torch.tensor([3, 0, 5, 2])
    x, w = torch.randn(10, 8), torch.randn(4, 8, 12)
    rows = torch.arange(4).repeat_interleave(counts)
    offs = counts.cumsum(0).to(torch.int32)
    grouped = torch.nn.functional.grouped_mm(x, w, offs=offs)
    torch.testing.assert_close(dense_grouped_linear(x, w, rows), grouped)
    torch.testing.assert_close(grouped[3:8], x[3:8] @ w[2])
