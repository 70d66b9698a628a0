"""Benchmark: the planner beside its peers on the same published runs, accuracy and time per
layout side by side.

Peers: llm-analysis (PyPI ``llm-analysis``; used when it is importable: it is not a
dependency of this project, its transformers 4.31 needs tokenizers < 0.14 where the project
needs >= 0.19, so ``pip install llm-analysis`` into a separate environment or accept the
downgrade) with its own default efficiencies, and, when ``--calculon PATH`` points at a local
checkout of github.com/calculon-ai/calculon, Calculon with its shipped system files. Each
peer predicts the step time of the row's own layout; a throughput metric scales as 1/step,
so a peer's prediction of the row's published metric is the planner's prediction × (the
planner's step / the peer's step). ``--holdout`` runs the hold-out set instead, rows the
planner's calibration never saw. A row a peer cannot express (MoE, context or expert
parallelism, MLA, fp8, an interleaved pipeline, an accelerator it has no file for) is listed
with the reason and left out of its error. On the packaged set the planner's own error is
in-sample (its kernel efficiencies were calibrated on those rows); on ``--holdout`` it is
out of sample.

    .venv/bin/python bench/plan_vs_peers.py [--calculon PATH] [--holdout] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gigafactory.plan.runs import PublishedRun, default_holdout_path, read_runs
from gigafactory.plan.validate import compare_run, predict_run

LLM_ANALYSIS_GPUS = {"a100-80gb": "a100-sxm-80gb", "h100-sxm": "h100-sxm-80gb"}
CALCULON_SYSTEMS = {"a100-80gb": "a100_80g.json", "h100-sxm": "h100_80g_nvl8.json"}


#: (what a peer cannot model, test on (run, model, layout)); COMMON: neither peer.
Check = tuple[str, Any]
COMMON: list[Check] = [
    ("MLA attention", lambda r, m, lay: m.attention == "mla"),
    ("context parallelism", lambda r, m, lay: lay.cp > 1),
    ("sliding-window/sink attention", lambda r, m, lay: m.sliding_window or m.attention_sinks),
]
LLM_ANALYSIS: list[Check] = [
    ("no GPU config for this accelerator", lambda r, m, lay: r.gpu not in LLM_ANALYSIS_GPUS),
    ("MoE with shared/fine-grained experts or dense layers", lambda r, m, lay: m.is_moe and (
        m.shared_experts or m.dense_layers or m.moe_ffn != m.ffn_width)),
    ("fp8 training (its 8-bit modes quantise weights)", lambda r, m, lay: lay.precision == "fp8"),
    ("interleaved pipeline", lambda r, m, lay: lay.vpp > 1),
]  # fmt: skip
CALCULON: list[Check] = [
    ("no system file for this accelerator", lambda r, m, lay: r.gpu not in CALCULON_SYSTEMS),
    ("MoE / expert parallelism", lambda r, m, lay: m.is_moe),
    ("grouped-query attention", lambda r, m, lay: m.n_kv_heads not in (m.heads, 1)),
    ("gated MLP", lambda r, m, lay: m.gated),
    ("FSDP or uneven stages", lambda r, m, lay: lay.sharding == "fsdp" or lay.uneven),
    ("fp8 on this GPU", lambda r, m, lay: lay.precision == "fp8" and r.gpu != "h100-sxm"),
]


def gaps(run: PublishedRun, checks: list[Check]) -> list[str]:
    """What of ``run`` a peer cannot express (``checks`` beside ``COMMON``)."""
    model, lay = run.model(), run.layout()
    return [name for name, test in COMMON + checks if test(run, model, lay)]


def llm_analysis_step_s(run: PublishedRun, calibrated: bool = False) -> float:
    """llm-analysis's seconds per iteration for the row's layout: with its defaults (100% of
    peak FLOPs and HBM bandwidth), or ``calibrated`` with the planner's matmul and memory
    efficiencies for the accelerator."""
    from llm_analysis.analysis import train

    model, lay = run.model(), run.layout()
    cfg = {
        "name": model.name, "num_layers": model.layers, "n_head": model.heads,
        "hidden_dim": model.hidden, "vocab_size": model.vocab, "max_seq_len": model.seq_len,
        "num_key_value_heads": model.n_kv_heads,
        "ffn_embed_dim": model.moe_ffn if model.is_moe else model.ffn_width,
        "moe_num_experts": model.experts if model.is_moe else 1,
        "moe_top_k": model.top_k if model.is_moe else 1,
    }  # fmt: skip
    recompute = {"none": 0, "selective": 1, "full": 2}[lay.recompute]
    zero = {"none": 0, "zero1": 1, "fsdp": 3}[lay.sharding]
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(cfg, f)
        f.flush()
        out = train(
            model_name=f.name, gpu_name=LLM_ANALYSIS_GPUS[run.gpu], dtype_name="w16a16e16",
            log_level="ERROR", batch_size_per_gpu=lay.micro_batch,
            global_batch_size=lay.global_batch, seq_len=model.seq_len,
            activation_recomputation=recompute, ds_zero=zero, tp_size=lay.tp, pp_size=lay.pp,
            ep_size=lay.ep, total_num_gpus=lay.tp * lay.pp * lay.dp,
            mlp_gated_linear_units=model.gated, **(_calibration(run) if calibrated else {}),
        )  # fmt: skip
    return float(out["latency_per_iter"])


def _calibration(run: PublishedRun) -> dict[str, float]:
    from gigafactory.plan.compute import efficiency
    from gigafactory.spec import load_hardware

    hw = load_hardware(run.gpu)
    return {
        "flops_efficiency": efficiency(hw, "matmul"),
        "hbm_memory_efficiency": efficiency(hw, "memory"),
    }


def calculon_step_s(run: PublishedRun, root: Path) -> float:
    """Calculon's seconds per batch for the row's layout, with its shipped system file."""
    import calculon
    from calculon.llm import Llm

    model, lay = run.model(), run.layout()
    app = Llm.Application({
        "hidden": model.hidden, "feedforward": model.ffn_width, "seq_size": model.seq_len,
        "attn_heads": model.heads, "attn_size": model.dim_head, "num_blocks": model.layers,
    })  # fmt: skip
    exe = Llm.Execution.from_json({
        "num_procs": lay.gpus, "tensor_par": lay.tp, "pipeline_par": lay.pp,
        "data_par": lay.dp, "tensor_par_net": 0, "pipeline_par_net": 1, "data_par_net": 1,
        "batch_size": lay.global_batch, "microbatch_size": lay.micro_batch,
        "datatype": "float8" if lay.precision == "fp8" else "float16",
        "fused_activation": True,
        "attention_type": "multihead" if model.n_kv_heads == model.heads else "multiquery",
        "activation_recompute": {"none": "none", "selective": "attn_only", "full": "full"}[
            lay.recompute
        ],
        "pipeline_interleaving": lay.vpp, "optimizer_sharding": lay.sharding == "zero1",
        "tensor_par_comm_type": "rs_ag" if lay.sequence_parallel else "ar",
        "tensor_par_overlap": "none", "seq_par_ag_redo": False, "data_par_overlap": True,
        "weight_offload": False, "activations_offload": False, "optimizer_offload": False,
        "training": True,
    })  # fmt: skip
    system = calculon.System(
        calculon.read_json_file(str(root / "systems" / CALCULON_SYSTEMS[run.gpu]))
    )
    llm = Llm(app, logging.getLogger("calculon"))
    llm.compile(system, exe)
    llm.run(system)
    return float(llm.get_total_time())


def _timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _peer(name: str, missing: list[str], step_fn: Any, ours: Any, our_step: float) -> dict:
    if missing:
        return {f"{name}_error_pct": None, f"{name}_note": "cannot express: " + "; ".join(missing)}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            step, secs = _timed(step_fn)
    except Exception as exc:  # a peer's own refusal (its asserts or errors), reported as such
        return {
            f"{name}_error_pct": None,
            f"{name}_note": f"refused: {type(exc).__name__}: {exc}"[:120],
        }
    predicted = ours.predicted * our_step / step
    error = 100.0 * (predicted - ours.published) / ours.published
    return {f"{name}_error_pct": error, f"{name}_s_per_layout": secs, f"{name}_note": ""}


def compare(calculon_root: Path | None, runs_path: Path | None = None) -> dict[str, Any]:
    """Every row of ``runs_path`` (default: the packaged published runs) through the planner
    and each available peer."""
    try:
        import llm_analysis  # noqa: F401

        have_llm = True
    except ImportError:
        have_llm = False
    if calculon_root is not None:
        sys.path.insert(0, str(calculon_root))
    rows = []
    for run in read_runs(runs_path):
        ours, secs = _timed(lambda run=run: compare_run(run))
        our_step = predict_run(run).step_s
        row: dict[str, Any] = {"in_scope": ours.in_scope, "id": run.id, "metric": ours.metric, "published": ours.published,
                               "planner_error_pct": ours.error_pct, "planner_s_per_layout": secs}  # fmt: skip
        if have_llm:
            row |= _peer("llm_analysis", gaps(run, LLM_ANALYSIS),
                         lambda run=run: llm_analysis_step_s(run), ours, our_step)  # fmt: skip
            row |= _peer("llm_analysis_cal", gaps(run, LLM_ANALYSIS),
                         lambda run=run: llm_analysis_step_s(run, True), ours, our_step)  # fmt: skip
        if calculon_root is not None:
            row |= _peer("calculon", gaps(run, CALCULON),
                         lambda run=run: calculon_step_s(run, calculon_root), ours, our_step)  # fmt: skip
        rows.append(row)
    summary = {}
    tools = ["planner"] + ["llm_analysis", "llm_analysis_cal"] * have_llm
    for peer in tools + ["calculon"] * bool(calculon_root):
        both = [r for r in rows if r["in_scope"] and r.get(f"{peer}_error_pct") is not None]
        errs = [abs(r[f"{peer}_error_pct"]) for r in both]
        secs = [r[f"{peer}_s_per_layout"] for r in both]
        summary[peer] = {
            "rows": len(errs),
            "median_abs_error_pct": statistics.median(errs) if errs else None,
            "max_abs_error_pct": max(errs) if errs else None,
            "planner_median_abs_error_pct_same_rows": statistics.median(
                abs(r["planner_error_pct"]) for r in both
            ) if both else None,
            "median_s_per_layout": statistics.median(secs) if secs else None,
        }  # fmt: skip
    return {"rows": rows, "summary": summary, "llm_analysis_installed": have_llm,
            "calculon": str(calculon_root) if calculon_root else None}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calculon", type=Path, help="a local checkout of calculon-ai/calculon")
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="the hold-out set (data/published_runs_holdout.csv): out of sample for the planner",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.calculon is not None and not (args.calculon / "calculon" / "llm").is_dir():
        parser.error(f"--calculon {args.calculon}: no calculon/llm package there")
    logging.disable(logging.WARNING)
    result = compare(args.calculon, default_holdout_path() if args.holdout else None)
    if args.json:
        print(json.dumps(result))
        return
    console = Console(width=160)
    peers = [
        p
        for p in ("llm_analysis", "llm_analysis_cal", "calculon")
        if any(f"{p}_note" in r for r in result["rows"])
    ]
    table = Table(title="planner vs peers on the published runs (|error| %, row's own metric)")
    for col in ["id", "planner", *peers, "peers cannot express"]:
        table.add_column(col, justify="left" if col in ("id", "peers cannot express") else "right")
    for r in result["rows"]:
        cells = [r["id"] + ("" if r["in_scope"] else " (out of scope)"),
                 f"{r['planner_error_pct']:+.1f}"]  # fmt: skip
        notes = []
        for p in peers:
            e = r.get(f"{p}_error_pct")
            cells.append("—" if e is None else f"{e:+.1f}")
            if r.get(f"{p}_note"):
                notes.append(f"{p}: {r[f'{p}_note']}")
        table.add_row(*cells, " | ".join(notes))
    console.print(table)
    if not result["llm_analysis_installed"]:
        console.print("llm-analysis is not installed here: pip install llm-analysis to compare")
    t = Table(
        title="summary over the rows in scope (llm_analysis_cal: at the planner's efficiencies)"
    )
    for col in ("tool", "rows it expresses", "median |err| %", "max |err| %",
                "planner median |err| % on those rows", "median s per layout"):  # fmt: skip
        t.add_column(col, justify="left" if col == "tool" else "right")
    for tool, s in result["summary"].items():

        def f(x: float | None, fmt: str = ".1f") -> str:
            return "—" if x is None else format(x, fmt)

        t.add_row(tool, str(s["rows"]), f(s["median_abs_error_pct"]), f(s["max_abs_error_pct"]),
                  f(s["planner_median_abs_error_pct_same_rows"]),
                  f(s["median_s_per_layout"], ".2e"))  # fmt: skip
    console.print(t)


if __name__ == "__main__":
    main()
