"""Specs and catalog: parameter counts against published figures, and clear refusals."""

import pytest

from gigafactory.errors import LayoutError, SpecError, UnknownPresetError
from gigafactory.plan.params import active_params, total_params
from gigafactory.plan.runs import read_runs
from gigafactory.spec import (
    ClusterSpec,
    LayoutSpec,
    ModelSpec,
    list_clusters,
    list_hardware,
    list_models,
    load_cluster,
    load_hardware,
    load_model,
)


@pytest.mark.parametrize(
    ("name", "total_b", "active_b"),
    [
        ("grok-1", 314, 84),
        ("llama3-405b", 405, None),
        ("llama3-70b", 70.6, None),
        ("llama3-8b", 8.03, None),
        ("gpt3-175b", 175, None),
        ("deepseek-v3", 671, 37),
        ("mixtral-8x7b", 46.7, 12.9),
        ("qwen3-235b-a22b", 235, 22),
    ],
)
def test_param_counts_match_published(name, total_b, active_b):
    model = load_model(name)
    assert total_params(model) / 1e9 == pytest.approx(total_b, rel=0.01)
    if active_b is not None:
        # DeepSeek quotes 37B active without embeddings' share rounding; allow 2%.
        assert active_params(model) / 1e9 == pytest.approx(active_b, rel=0.02)


def test_grok1_is_exactly_the_released_architecture():
    g = load_model("grok-1")
    assert (g.layers, g.hidden, g.heads, g.n_kv_heads, g.dim_head) == (64, 6144, 48, 8, 128)
    assert (g.experts, g.top_k, g.moe_ffn, g.mlp, g.vocab, g.seq_len) == (
        8,
        2,
        32768,
        "geglu",
        131072,
        8192,
    )
    assert not g.moe_renormalize and g.tied_embeddings and not g.bias
    assert g.norm_layout == "sandwich" and g.norm == "rmsnorm" and g.norm_eps == 1e-5
    assert g.attn_logit_softcap == 30.0 and g.rope_theta == 10_000
    assert g.embedding_multiplier == pytest.approx(78.38, abs=0.01)
    assert g.output_multiplier == pytest.approx(0.5774, abs=1e-4)


def _rounding_unit(text: str) -> float:
    """Half a unit in the last digit of a published figure such as "1.7" or "314"."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return 0.5 * 10**-decimals


def test_every_published_row_with_params_matches_within_one_percent():
    """Within 1% of any value that rounds to the published figure ("1.7B" is 1.65..1.75B)."""
    checked = 0
    for run in read_runs():
        if run.params_b is None:
            continue
        published = run.params_b
        half_unit = _rounding_unit(run.row["params_b"])
        predicted = total_params(run.model()) / 1e9
        assert abs(predicted - published) <= half_unit + 0.01 * published, (
            f"{run.id}: {predicted:.2f}B vs published {published}B"
        )
        checked += 1
    assert checked >= 30


def test_catalog_holds_the_required_presets():
    for name in (
        "grok-1",
        "llama3-8b",
        "llama3-70b",
        "llama3-405b",
        "gpt3-175b",
        "deepseek-v3",
        "mixtral-8x7b",
    ):
        assert name in list_models()
    for name in ("a100-80gb", "h100-sxm", "h800", "h200", "b200", "gb200"):
        assert name in list_hardware()
    colossus = load_cluster("colossus")
    assert colossus.gpus == 100_000 and colossus.gpu == "h100-sxm"
    assert colossus.fabric == "spectrum-x" and (colossus.nic_gbps or 400) == 400
    assert any(load_cluster(c).gpus == 24_576 for c in list_clusters())
    assert load_hardware("h100-sxm").peak("bf16") == pytest.approx(989.5)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(UnknownPresetError) as info:
        load_model("grok-9")
    assert "grok-1" in str(info.value) and "llama3-8b" in str(info.value)


def test_user_yaml_preset(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("layers: 2\nhidden: 64\nheads: 4\nvocab: 100\nseq_len: 32\n")
    model = load_model(str(path))
    assert model.name == "tiny" and model.dim_head == 16


def test_unknown_field_names_the_field_and_suggests():
    with pytest.raises(SpecError) as info:
        ModelSpec.from_dict(
            {"name": "x", "layers": 2, "hiden": 64, "heads": 4, "vocab": 10, "seq_len": 8}
        )
    assert info.value.field == "hiden" and "hidden" in str(info.value)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"layers": 0}, "layers"),
        ({"kv_heads": 3}, "kv_heads"),
        ({"mlp": "swish"}, "mlp"),
        ({"experts": 8, "top_k": 9, "moe_ffn": 64}, "top_k"),
        ({"experts": 8, "top_k": 2}, "moe_ffn"),
        ({"attention": "mla"}, "kv_lora_rank"),
    ],
)
def test_model_validation_names_the_field(changes, field):
    base = {"name": "x", "layers": 2, "hidden": 64, "heads": 4, "vocab": 10, "seq_len": 8}
    with pytest.raises(SpecError) as info:
        ModelSpec.from_dict(base | changes)
    assert info.value.field == field


def test_hardware_without_a_precision_says_which_it_has():
    with pytest.raises(SpecError, match="bf16"):
        load_hardware("a100-80gb").peak("fp8")


def test_cluster_validation():
    with pytest.raises(SpecError) as info:
        ClusterSpec(name="c", gpu="h100-sxm", gpus=100, pue=0.9)
    assert info.value.field in ("gpus", "pue")
    with pytest.raises(SpecError, match="pue"):
        ClusterSpec(name="c", gpu="h100-sxm", gpus=64, pue=0.9)


@pytest.mark.parametrize(
    ("layout", "gpus", "reason"),
    [
        (LayoutSpec(tp=8, pp=2, dp=4, global_batch=64), 128, "does not divide|GPUs"),
        (LayoutSpec(tp=5, dp=1, global_batch=8), 5, "attention heads"),
        (LayoutSpec(pp=3, dp=1, global_batch=8), 3, "layers"),
        (LayoutSpec(dp=8, ep=16, global_batch=64), 8, "experts|dp"),
        (LayoutSpec(dp=8, global_batch=12), 8, "multiple"),
    ],
)
def test_layout_refusals_give_the_reason(layout, gpus, reason):
    with pytest.raises(LayoutError, match=reason):
        layout.check(load_model("grok-1"), gpus)


def test_valid_grok_layout_passes():
    layout = LayoutSpec(tp=8, pp=8, dp=1560, ep=8, global_batch=1560 * 4, micro_batch=1)
    layout.check(load_model("grok-1"), 8 * 8 * 1560)


def test_which_blocks_are_moe_is_one_rule_for_the_model_and_the_trainer():
    deepseek = load_model("deepseek-v3")  # its first 3 blocks are dense
    moe = [deepseek.is_moe_layer(i) for i in range(deepseek.layers)]
    assert moe[:4] == [False, False, False, True] and all(moe[3:])
    assert sum(moe) == deepseek.moe_layers
    dense = load_model("llama3-8b")
    assert not any(dense.is_moe_layer(i) for i in range(dense.layers)) and dense.moe_layers == 0
