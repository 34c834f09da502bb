"""The command line as a user meets it: help, bad flags, a dry run end to end, and missing data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import build_parser, config_from_args, main


def _train(repo_root: Path, *flags: str, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(repo_root), **env_vars}
    return subprocess.run([sys.executable, "-m", "training", *flags], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=240)


def test_help_states_the_defaults() -> None:
    text = build_parser().format_help()
    for expected in ("--dry-run", "--data-dir", "(default: cnn4)", "(default: onecycle)", "0.2 for sgd"):
        assert expected in " ".join(text.split())


def test_flags_become_a_config() -> None:
    cfg = config_from_args(build_parser().parse_args(
        ["--arch", "mlp", "--hidden", "64,32", "--activation", "tanh", "--optimizer", "adam", "--no-augment",
         "--dataset", "digits"]))
    assert (cfg.arch, cfg.hidden, cfg.activation, cfg.augment) == ("mlp", (64, 32), "tanh", False)
    assert cfg.lr == 3e-3 and cfg.name == "digits-mlp"  # per-optimiser lr, DATASET-ARCH name


@pytest.mark.parametrize(("flags", "message"), [
    (["--arch", "vgg"], "invalid choice: 'vgg'"),
    (["--epochs", "ten"], "invalid int value"),
    (["--epochs", "0"], "epochs must be > 0"),
    (["--hidden", "64,x"], "comma-separated list"),
    (["--device", "gpu"], "device 'gpu'"),
    (["--dataset", "imagenet"], "dataset 'imagenet'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_bad_flags_are_rejected_argparse_style(flags: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: trainserve-train") and message in err


def test_dry_run_end_to_end_on_an_mnist_slice(repo_root: Path, mnist_slice: Path, tmp_path: Path) -> None:
    result = _train(repo_root, "--data-dir", str(mnist_slice), "--no-download", "--dry-run",
                    "--eval-batch-size", "100", "--out", str(tmp_path / "models"),
                    "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    assert "epoch  1/1" in result.stderr and "test accuracy" in result.stderr
    assert "Warning" not in result.stderr and "No CUDA runtime" not in result.stderr, result.stderr
    assert not (tmp_path / "models").exists()  # a dry run never publishes into the model repository
    (artifact,) = (tmp_path / "runs").glob("mnist-cnn-*/models/mnist-cnn/1")
    names = {p.name for p in artifact.iterdir()}
    assert names == {"model.pt", "model.pt2", "model.aoti-cpu.pt2", "manifest.json", "metrics.jsonl",
                     "curves.png", "confusion.png", "mistakes.png", "attributions.png", "reliability.png",
                     "outliers.png"}
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert manifest["extra"]["dry_run"] is True and manifest["dataset"]["test_examples"] == 300
    # The recipe of issue 26, end to end: its net, outlier exposure, a temperature and a threshold.
    assert manifest["architecture"] == "cnn4" and manifest["training"]["outlier_weight"] > 0
    assert manifest["calibration"]["fitted_on"] == "validation split"
    assert 0 < manifest["outliers"]["threshold"] <= 1 and "other_style_ece" in manifest["metrics"]
    assert manifest["training"]["dry_run"] is True
    assert [f["format"] for f in manifest["formats"]] == ["torchscript", "exported", "aoti"]


@pytest.mark.slow
def test_without_a_cxx_compiler_the_cli_exports_what_needs_none(repo_root: Path, mnist_slice: Path,
                                                                 tmp_path: Path) -> None:
    result = _train(repo_root, "--data-dir", str(mnist_slice), "--no-download", "--dry-run",
                    "--eval-batch-size", "100", "--run-dir", str(tmp_path / "runs"),
                    CXX=str(tmp_path / "no-such-c++"))
    assert result.returncode == 0, result.stderr
    assert "not publishing the aoti-cpu format" in result.stderr and "C++ compiler" in result.stderr
    (artifact,) = (tmp_path / "runs").glob("mnist-cnn-*/models/mnist-cnn/1")
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert [f["format"] for f in manifest["formats"]] == ["torchscript", "exported"]
    assert not (artifact / "model.aoti-cpu.pt2").exists()


def test_missing_data_is_one_clear_paragraph(repo_root: Path, tmp_path: Path) -> None:
    result = _train(repo_root, "--data-dir", str(tmp_path / "nowhere"), "--no-download")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "train-images-idx3-ubyte.gz" in result.stderr and "t10k-labels-idx1-ubyte.gz" in result.stderr
    assert str(tmp_path / "nowhere" / "mnist") in " ".join(result.stderr.split())
    assert result.stderr.strip().startswith("error: The mnist dataset was not found")


def test_the_data_folder_defaults_to_a_shared_copy_beside_the_checkout_as_make_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkout = tmp_path / "trainserve"
    (checkout / "data").mkdir(parents=True)  # e.g. a CSV of one's own: not where MNIST is
    monkeypatch.chdir(checkout)
    assert build_parser().parse_args([]).data_dir == Path("data")  # no shared copy: data/ (and download)
    (tmp_path / "shared" / "datasets" / "mnist").mkdir(parents=True)
    assert build_parser().parse_args([]).data_dir == Path("../shared/datasets")
    assert build_parser().parse_args(["--data-dir", "data"]).data_dir == Path("data")
