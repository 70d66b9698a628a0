"""The train/generate/export verbs in-process: real runs, and each bad input as one red line
with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigafactory.cli import main

HERE = Path(__file__).parent
TINY = ["--posts", "2000", "--no-tensorboard", "--batch", "4"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    captured = capsys.readouterr()
    return exit_.value.code or 0, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(HERE / "tiny-dense.yaml"), "--steps", "3", "--out",
              str(out), *TINY])  # fmt: skip
    assert exit_.value.code == 0
    return out


def test_train_writes_checkpoint_logs_tensorboardless_export(trained):
    assert (trained / "checkpoints" / "step_00000003" / "manifest.json").is_file()
    assert (trained / "model" / "model.safetensors").is_file()
    assert (trained / "model" / "config.json").is_file()
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 3
    assert (trained / "tokenizer.json").is_file()


@pytest.mark.parametrize("source", ["run", "model", "checkpoint"])
def test_generate_samples_from_a_trained_model(capsys, trained, source):
    path = {
        "run": trained,
        "model": trained / "model",
        "checkpoint": trained / "checkpoints" / "step_00000003",
    }[source]
    code, out, err = run(
        capsys, "generate", "--checkpoint", str(path), "Grok says", "--max-tokens", "8",
        "--temperature", "0.9", "--top-p", "0.9",
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("Grok says") and len(out.strip()) > len("Grok says")


def test_export_verb(capsys, trained, tmp_path):
    out = tmp_path / "export"
    code, _, err = run(capsys, "export", "--checkpoint", str(trained), "--out", str(out))
    assert code == 0, err
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "tokenizer.json"}
    (tmp_path / "mine.txt").write_text("a user's file")
    code, _, err = run(capsys, "export", "--checkpoint", str(trained), "--out", str(tmp_path))
    assert code == 2 and "is not a model export" in err
    assert (tmp_path / "mine.txt").is_file()


def test_checkpoint_of_another_spec_is_one_line_naming_the_fix(capsys, trained):
    code, _, err = run(
        capsys, "train", "--model", str(HERE / "tiny-moe.yaml"), "--steps", "4", "--out",
        str(trained), *TINY,
    )  # fmt: skip
    assert code == 2
    assert err.count("\n") == 1 and "--model tiny-dense" in err and "new --out" in err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "grok-9"], "unknown model 'grok-9'"),
        (["--dp", "2"], "dp=2 but the job has 1 process"),
        (["--batch", "6", "--micro-batch", "4"], "not a multiple of micro_batch·dp"),
        (["--seq", "4096"], "--seq 4096 is longer"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--device", "tpu"], "device must be one of"),
        (["--tp", "2"], "tp·pp·dp = 2·1·1 = 2"),
        (["--tp", "0"], "--tp 0: must be a positive integer"),
        (["--pp", "2", "--dp", "1"], "tp·pp·dp = 1·2·1 = 2"),
        (["--vpp", "2"], "interleaving (vpp > 1) needs pipeline parallelism"),
        (["--ep", "2"], "ep=2 needs an MoE model"),
    ],
    ids=[
        "unknown-preset",
        "layout-vs-world",
        "batch-split",
        "seq",
        "steps",
        "device",
        "tp",
        "tp-zero",
        "pp",
        "vpp",
        "ep",
    ],
)
def test_bad_input_is_one_red_line(capsys, tmp_path, args, match):
    base = ["train", "--model", str(HERE / "tiny-dense.yaml"), "--out", str(tmp_path), *TINY]
    code, _, err = run(capsys, *base, *args)
    assert code == 2
    assert match in err and err.count("\n") == 1


def test_data_path_without_text_is_one_red_line(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "train", "--data", str(empty), "--out", str(tmp_path / "r"))
    assert code == 2 and "holds no usable text files" in err and err.count("\n") == 1


def test_generate_without_a_model_is_one_red_line(capsys, tmp_path):
    code, _, err = run(capsys, "generate", "--checkpoint", str(tmp_path), "hi")
    assert code == 2 and "no exported model and no complete checkpoint" in err
