"""`gigafactory catalog`: the presets a user can name."""

from __future__ import annotations

from enum import StrEnum

import typer
from rich.console import Console
from rich.table import Table

from gigafactory.spec import catalog as cat


class Kind(StrEnum):
    models = "models"
    hardware = "hardware"
    clusters = "clusters"


def register(app: typer.Typer) -> None:
    @app.command("catalog")
    def catalog_cmd(
        kind: Kind = typer.Argument(Kind.models, help="Which presets to list."),
    ) -> None:
        """List the presets of the catalog (models, hardware or clusters)."""
        from gigafactory.plan.params import active_params, total_params

        table = Table(title=f"gigafactory {kind.value}")
        if kind is Kind.models:
            for col in ("name", "layers", "hidden", "heads/kv", "experts", "params", "active"):
                table.add_column(col, justify="left" if col == "name" else "right")
            for name in cat.list_models():
                m = cat.load_model(name)
                table.add_row(
                    name,
                    str(m.layers),
                    str(m.hidden),
                    f"{m.heads}/{m.n_kv_heads}",
                    f"{m.experts}×top{m.top_k}" if m.is_moe else "-",
                    f"{total_params(m) / 1e9:,.2f}B",
                    f"{active_params(m) / 1e9:,.2f}B",
                )
        elif kind is Kind.hardware:
            for col in ("name", "bf16 TF/s", "fp8 TF/s", "HBM GB", "HBM TB/s", "NVLink", "W"):
                table.add_column(col, justify="left" if col == "name" else "right")
            for name in cat.list_hardware():
                h = cat.load_hardware(name)
                table.add_row(
                    name,
                    f"{h.peak_tflops.get('bf16', 0):g}",
                    f"{h.peak_tflops.get('fp8', 0):g}" if "fp8" in h.peak_tflops else "-",
                    f"{h.memory_gb:g}",
                    f"{h.memory_bw_tbs:g}",
                    f"{h.nvlink_domain}×{h.nvlink_gbs:g} GB/s",
                    f"{h.tdp_w:g}",
                )
        else:
            for col in ("name", "gpu", "gpus", "fabric", "NIC Gb/s", "PUE"):
                table.add_column(col, justify="left" if col == "name" else "right")
            for name in cat.list_clusters():
                c = cat.load_cluster(name)
                hw = cat.load_hardware(c.gpu)
                table.add_row(
                    name,
                    c.gpu,
                    f"{c.gpus:,}",
                    c.fabric,
                    f"{c.nic_gbps or hw.nic_gbps:g}",
                    f"{c.pue:g}",
                )
        Console().print(table)
