"""Step composition, bad input, and monotonic properties."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gigafactory.errors import LayoutError
from gigafactory.plan.compute import stage_pass_times
from gigafactory.plan.memory import memory_per_gpu
from gigafactory.plan.search import search_layouts
from gigafactory.plan.step import estimate_step
from gigafactory.spec import LayoutSpec, load_cluster, load_hardware, load_model

H100 = load_hardware("h100-sxm")
COLOSSUS = load_cluster("colossus")
L70 = load_model("llama3-70b")
GROK = load_model("grok-1")


def _layout(**kw):
    base = dict(tp=8, pp=4, dp=32, micro_batch=1, global_batch=1024, recompute="selective")
    base.update(kw)
    return LayoutSpec(**base)


def test_step_parts_add_up_and_utilisation_is_sane():
    est = estimate_step(L70, _layout(), H100, COLOSSUS.with_gpus(1024))
    assert est.step_s == pytest.approx(sum(est.time.parts().values()))
    assert 0.2 < est.mfu < 0.7
    assert est.hfu >= est.mfu
    assert est.tokens_per_s_per_gpu * 1024 == pytest.approx(est.tokens_per_s)


def test_bubble_shrinks_with_interleaving():
    a = estimate_step(L70, _layout(), H100, COLOSSUS)
    b = estimate_step(L70, _layout(vpp=2), H100, COLOSSUS)
    assert b.time.bubble_s == pytest.approx(a.time.bubble_s / 2, rel=0.05)


@pytest.mark.parametrize(
    ("layout", "gpus", "match"),
    [
        (dict(tp=8, pp=4, dp=32), 1000, "GPUs"),
        (dict(tp=16, pp=1, dp=64), 1024, "NVLink"),
        (dict(tp=8, pp=3, dp=32), 768, "layers"),
        (dict(tp=8, pp=4, dp=32, global_batch=1000), 1024, "multiple"),
    ],
)
def test_bad_layouts_are_refused_with_the_reason(layout, gpus, match):
    with pytest.raises(LayoutError, match=match):
        estimate_step(L70, _layout(**layout), H100, COLOSSUS.with_gpus(gpus)).layout.check(
            L70, gpus
        )


def test_layout_that_does_not_fit_is_reported_not_hidden():
    est = estimate_step(L70, _layout(tp=1, pp=1, dp=1024, recompute="none", sharding="none"),
                        H100, COLOSSUS)  # fmt: skip
    assert not est.fits
    assert est.memory.optimizer_bytes > H100.memory_bytes


def test_grok1_on_colossus_search_is_fast_and_finds_fitting_layouts():
    result = search_layouts(GROK, H100, COLOSSUS)
    assert result.best and all(e.fits for e in result.best)
    speeds = [e.tokens_per_s_per_gpu for e in result.best]
    assert speeds == sorted(speeds, reverse=True)


ORDER = {"none": 0, "zero1": 1, "fsdp": 2}
RECOMPUTE = {"none": 0, "selective": 1, "full": 2}


@settings(max_examples=30, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 4, 8]),
    pp=st.sampled_from([1, 2, 4]),
    mb=st.sampled_from([1, 2]),
    a=st.sampled_from(list(ORDER)),
    b=st.sampled_from(list(ORDER)),
)
def test_more_sharding_never_raises_memory(tp, pp, mb, a, b):
    lo, hi = sorted((a, b), key=ORDER.get)
    la = _layout(tp=tp, pp=pp, dp=16, micro_batch=mb, global_batch=64, sharding=lo)
    lb = la.replace(sharding=hi)
    assert memory_per_gpu(GROK, lb, H100).total_bytes <= memory_per_gpu(
        GROK, la, H100
    ).total_bytes * (1 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(
    tp=st.sampled_from([1, 2, 4, 8]),
    pp=st.sampled_from([1, 2, 4]),
    a=st.sampled_from(list(RECOMPUTE)),
    b=st.sampled_from(list(RECOMPUTE)),
)
def test_more_recompute_never_raises_activation_memory(tp, pp, a, b):
    lo, hi = sorted((a, b), key=RECOMPUTE.get)
    la = _layout(tp=tp, pp=pp, dp=16, global_batch=64, recompute=lo)
    lb = la.replace(recompute=hi)
    assert (
        memory_per_gpu(L70, lb, H100).activations_bytes
        <= memory_per_gpu(L70, la, H100).activations_bytes
    )


@settings(max_examples=20, deadline=None)
@given(dp=st.sampled_from([1, 2, 8, 64, 512]), tp=st.sampled_from([1, 2, 4, 8]))
def test_more_gpus_at_fixed_per_gpu_work_never_lowers_compute_time(dp, tp):
    """Weak scaling: adding data-parallel GPUs with the same micro-batches per GPU leaves
    the per-GPU compute unchanged, so the step's ideal compute time cannot drop."""
    small = _layout(tp=tp, pp=1, dp=dp, global_batch=4 * dp)
    big = small.replace(dp=2 * dp, global_batch=8 * dp)
    t_small = stage_pass_times(L70, small, H100).total_s * small.microbatches
    t_big = stage_pass_times(L70, big, H100).total_s * big.microbatches
    assert t_big >= t_small * (1 - 1e-12)
    # (the whole step may get shorter: ZeRO-1 shards the optimizer update over more GPUs)
