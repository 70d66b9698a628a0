"""`compare`: one model and token budget on several clusters, side by side, and a scaling
sweep; every point is the planner's own search and run totals."""

import base64
import json
from html.parser import HTMLParser

import pytest

from gigafactory.cli import main
from gigafactory.errors import LayoutError, SpecError
from gigafactory.plan.compare import compare_clusters, plan_on_cluster, sweep_sizes
from gigafactory.plan.run import estimate_run
from gigafactory.plan.search import search_layouts
from gigafactory.reliability import ReliabilityScenario
from gigafactory.reliability.studies import load_study
from gigafactory.spec import load_cluster, load_hardware, load_model

CLUSTER_YAML = """\
name: lab-2k
gpu: h100-sxm
gpus: 2048
nic_gbps: 400
fabric: infiniband
node_power_w: 10200
pue: 1.2
power_budget_mw: 10
"""


class Page(HTMLParser):
    """Collects what a reader of the report sees: cell texts, images and any link out."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.images: list[str] = []
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self._in_cell = tag in ("td", "th")
        for name, value in attrs:
            if name == "src" and tag == "img":
                self.images.append(value)
            elif name in ("href", "src") and value:
                self.urls.append(value)
        if tag == "td":
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell and self.cells:
            self.cells[-1] += data


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    assert "http://" not in text and "https://" not in text  # readable offline
    assert "script" not in page.tags and "link" not in page.tags and not page.urls
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    return page


@pytest.fixture(scope="module")
def small():
    model = load_model("llama3-8b")
    clusters = [load_cluster("meta-24k"), load_cluster("dgx-b200-1k")]
    return model, clusters, compare_clusters(model, clusters, tokens=1e12, points=2)


def test_each_cluster_gets_the_planners_own_best_plan(small):
    model, clusters, result = small
    assert [p.cluster for p in result.plans] == ["meta-24k", "dgx-b200-1k"]
    for plan, cluster in zip(result.plans, clusters, strict=True):
        hardware = load_hardware(cluster.gpu)
        found = search_layouts(model, hardware, cluster, cluster.gpus, 4096, "bf16", 5)
        assert plan.step == found.best[0]
        assert plan.run == estimate_run(found.best[0], cluster, hardware, 1e12)
        assert plan.gpus == cluster.gpus and plan.hardware == hardware.name


def test_scaling_sweep_trades_days_for_goodput(small):
    _, _, result = small
    meta = [s for s in result.scaling if s.cluster == "meta-24k"]
    assert [s.gpus for s in meta] == [24_576, 16_384]
    assert all(s.fits for s in meta)
    # More GPUs: fewer days, more interruptions, so lower goodput.
    assert meta[0].days < meta[1].days and meta[0].goodput < meta[1].goodput
    whole = result.plans[0]
    assert meta[0].days == whole.run.days and meta[0].mfu == whole.step.mfu


def test_fastest_swept_size_is_the_one_with_fewest_wall_days(small):
    _, _, result = small
    best = result.fastest_size("meta-24k")
    assert best.wall_days == min(s.wall_days for s in result.scaling if s.cluster == "meta-24k")
    assert best.gpus == 24_576


def test_sweep_sizes_are_the_cluster_and_powers_of_two_below():
    assert sweep_sizes(load_cluster("colossus"), 4) == [100_000, 65_536, 32_768, 16_384]
    assert sweep_sizes(load_cluster("dgx-b200-1k"), 6) == [1024]
    with pytest.raises(SpecError):
        sweep_sizes(load_cluster("colossus"), 0)


def test_a_model_that_fits_nowhere_is_refused():
    with pytest.raises(LayoutError, match="no layout of llama3-405b fits"):
        plan_on_cluster(load_model("llama3-405b"), load_cluster("dgx-b200-1k"), gpus=8)


def test_cli_compare_json_plot_and_report_with_a_yaml_cluster(tmp_path, capsys):
    yaml = tmp_path / "lab.yaml"
    yaml.write_text(CLUSTER_YAML)
    plot, report = tmp_path / "scaling.png", tmp_path / "compare.html"
    argv = ["compare", "meta-24k", str(yaml), "--model", "llama3-8b", "--tokens", "1e12"]
    with pytest.raises(SystemExit) as done:
        main([*argv, "--points", "2", "--json", "--plot", str(plot), "--report", str(report)])
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["cluster"] for p in data["plans"]] == ["meta-24k", "lab-2k"]
    lab = data["plans"][1]
    assert lab["gpus"] == 2048 and lab["run"]["power_budget_mw"] == 10
    assert lab["run"]["power_exceeds_budget"] is False
    assert {s["gpus"] for s in data["scaling"] if s["cluster"] == "lab-2k"} == {2048, 1024}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = parse(report.read_text())
    assert len(page.images) == 3  # scaling + one breakdown per cluster
    for p in data["plans"]:
        assert f"{p['step_s']:.3f}" in page.cells
        assert f"{100 * p['mfu']:.1f}%" in page.cells
        assert f"${p['run']['cost_usd'] / 1e6:,.1f}M" in page.cells


def test_cli_compare_table(capsys):
    with pytest.raises(SystemExit) as done:
        main(["compare", "dgx-b200-1k", "--model", "llama3-8b", "--points", "1"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "side by side" in out and "goodput after failures" in out and "scaling" in out
    assert "1,024 GPUs:" in out  # fastest GPU count swept


def test_cli_compare_study_sets_the_failure_rates(capsys):
    def goodput(*argv):
        with pytest.raises(SystemExit):
            main(["compare", "dgx-b200-1k", "--model", "llama3-8b", "--points", "1", "--json",
                  "--tokens", "1e12", *argv])  # fmt: skip
        return json.loads(capsys.readouterr().out)["plans"][0]["run"]["goodput"]

    cluster = load_cluster("dgx-b200-1k")
    model, hardware = load_model("llama3-8b"), load_hardware(cluster.gpu)
    best = search_layouts(model, hardware, cluster, 1024, 4096, "bf16", 5).best[0]
    for study in ("llama3", "rsc1"):
        expected = estimate_run(
            best, cluster, hardware, 1e12, ReliabilityScenario(failures=load_study(study))
        )
        assert goodput("--study", study) == pytest.approx(expected.goodput)
    assert goodput("--study", "rsc1") != goodput("--study", "llama3")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--points", "0"], "compare.points"),
        (["--study", "rsc3"], "reliability.study"),
        (["--tokens", "nan"], "plan.tokens"),
        (["--global-batch", "-1"], "plan.global_batch"),
        (["--checkpoint-s", "0"], "plan.checkpoint_s"),
        (["--restart-s", "-1"], "plan.restart_s"),
        (["--plot", "/no/such/dir/s.png"], "/no/such/dir"),
        (["--report", "/no/such/dir/c.html"], "/no/such/dir"),
        (["no-such-cluster"], "unknown cluster"),
        (["--model", "grok-9"], "unknown model"),
        (["--precision", "fp4"], None),  # rejected by the option's choices (click usage error)
    ],
)
def test_cli_compare_bad_values(capsys, argv, named):
    with pytest.raises(SystemExit) as done:
        main(["compare", *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip()
    if named is not None:
        assert len(err.splitlines()) == 1 and named in err


def test_plan_report_is_self_contained_with_its_numbers(tmp_path, capsys):
    report = tmp_path / "plan.html"
    with pytest.raises(SystemExit) as done:
        main(["plan", "--model", "llama3-8b", "--cluster", "meta-24k", "--gpus", "1024",
              "--tokens", "1e12", "--json", "--report", str(report)])  # fmt: skip
    assert done.value.code == 0
    data = json.loads(capsys.readouterr().out)
    page = parse(report.read_text())
    step = data["plan"]
    assert f"{data['run']['wall_days']:,.1f}" in page.cells
    assert f"{100 * data['run']['goodput']:.1f}%" in page.cells
    assert f"{step['memory']['total_bytes'] / 1e9:,.1f}" in page.cells
    assert f"Step time {step['time']['total_s']:,.3f} s" in report.read_text()
    assert "compute" in page.cells and "activations" in page.cells
    assert len(data["search"]["best"]) == sum(c.startswith("tp=") for c in page.cells)
    assert len(page.images) == 1
