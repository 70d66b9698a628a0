"""Bad plan/validate options end in one readable line and exit 2, before any work is done."""

import math

import pytest

from gigafactory.cli import main
from gigafactory.errors import SpecError
from gigafactory.spec.options import PlanOptions


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(argv))
    out = capsys.readouterr()
    return done.value.code, out.out, out.err.strip()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--cp", "0"], "plan.cp"),
        (["--cp", "0", "--tp", "8"], "plan.cp"),  # was a ZeroDivisionError
        (["--tokens", "nan"], "plan.tokens"),  # printed nan days with exit 0
        (["--tokens", "inf"], "plan.tokens"),
        (["--tokens", "-1"], "plan.tokens"),
        (["--top", "0"], "plan.top"),
        (["--top", "-3"], "plan.top"),
        (["--global-batch", "-1"], "plan.global_batch"),
        (["--tp", "0"], "plan.tp"),
        (["--pp", "-2"], "plan.pp"),
        (["--vpp", "0"], "plan.vpp"),
        (["--ep", "0"], "plan.ep"),
        (["--micro-batch", "0"], "plan.micro_batch"),
        (["--seq", "-5"], "plan.seq"),
        (["--gpus", "-8"], "plan.gpus"),
        (["--checkpoint-s", "0"], "plan.checkpoint_s"),
        (["--checkpoint-s", "nan"], "plan.checkpoint_s"),
        (["--restart-s", "-1"], "plan.restart_s"),
        (["--plot", "/no/such/dir/x.png"], "/no/such/dir"),
        (["--report", "/no/such/dir/plan.html"], "/no/such/dir"),
    ],
)
def test_bad_plan_options_are_one_line_and_exit_2(capsys, argv, named):
    code, out, err = run_cli(capsys, "plan", *argv)
    assert code == 2
    assert out == ""  # refused before any search or table
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert named in err


def test_plot_into_a_directory_is_refused(capsys, tmp_path):
    code, _, err = run_cli(capsys, "plan", "--plot", str(tmp_path))
    assert code == 2 and "is a directory" in err


@pytest.mark.parametrize(
    "argv", [["--plot", "/no/such/dir/v.png"], ["--json", "--plot", "/no/such/dir/v.png"]]
)
def test_validate_checks_its_plot_path_up_front(capsys, argv):
    code, out, err = run_cli(capsys, "validate", *argv)
    assert code == 2 and out == "" and "/no/such/dir" in err


def test_plan_options_accept_the_documented_defaults():
    opts = PlanOptions()
    assert opts.searching
    assert not PlanOptions(tp=8).searching


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1.0])
def test_plan_options_refuse_non_finite_tokens(bad):
    with pytest.raises(SpecError) as info:
        PlanOptions(tokens=bad)
    assert info.value.field == "tokens"
