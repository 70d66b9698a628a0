"""The HTML report renders offline in a real browser (Debian's headless Chromium)."""

import shutil
import subprocess

import numpy as np
import pytest

from gigafactory.plan.report import plan_report_html
from gigafactory.plan.run import estimate_run
from gigafactory.plan.step import estimate_step
from gigafactory.spec import LayoutSpec, load_cluster, load_hardware, load_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WARN_RGB = (253, 236, 234)  # the .warn box of an over-supply plan (CSS #fdecea)
BAR_RGB = (31, 119, 180)  # matplotlib's first colour: the step-time bars of the embedded PNG


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/install-system.sh")
def test_report_renders_with_the_network_cut_off(tmp_path):
    import matplotlib.image

    model, cluster = load_model("llama3-8b"), load_cluster("colossus")
    hardware = load_hardware(cluster.gpu)
    layout = LayoutSpec(tp=8, dp=12_500, global_batch=12_500)
    step = estimate_step(model, layout, hardware, cluster, model.seq_len)
    run = estimate_run(step, cluster, hardware, 1e12)
    assert run.power_exceeds_budget  # so the warning box must show
    page = tmp_path / "plan.html"
    page.write_text(plan_report_html(step, run, [step]), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND",  # nothing outside the file can load
            f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri(),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pixels = np.round(matplotlib.image.imread(shot)[:, :, :3] * 255).astype(int)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert WARN_RGB in colours  # inline CSS applied
    assert BAR_RGB in colours  # the base64 plot decoded and drawn
