"""The task, loss, tabular and transfer flags as a user types them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.cli import build_parser, config_from_args, main
from training.config import TrainConfig


def _config(*flags: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(list(flags)))


def test_task_flags_become_a_config() -> None:
    cfg = _config("--dataset", "csv:data/pets.csv", "--target", "grey,long_haired", "--target", "cat",
                  "--task", "multilabel", "--threshold", "0.3")
    assert cfg.target == ("grey", "long_haired", "cat") and cfg.threshold == 0.3
    assert cfg.arch == "mlp" and cfg.loss == "bce"  # feature data trains an mlp; bce suits multilabel
    assert cfg.name == "pets-multilabel-mlp"  # never a new version of a multiclass pets-mlp
    binary = _config("--task", "binary", "--positive", "7", "--loss", "mse")
    assert (binary.positive, binary.loss, binary.arch) == (("7",), "mse", "cnn4")
    assert binary.name == "mnist-binary-cnn"  # cnn4 artifacts are named as the compact cnn's were
    sets = _config("--task", "multilabel", "--label-set", "even=0,2,4,6,8", "--label-set", "prime=2,3,5,7")
    assert sets.label_set == ("even=0,2,4,6,8", "prime=2,3,5,7")
    transfer = _config("--dataset", "fashion-mnist", "--init-from", "models/mnist-cnn/1",
                       "--freeze", "features")
    assert transfer.init_from == Path("models/mnist-cnn/1") and transfer.freeze == "features"
    assert _config("--dataset", "spiral").name == "spiral-mlp"


@pytest.mark.parametrize(("flags", "message"), [
    (["--loss", "bce"], "--loss bce is for sigmoid outputs"),
    (["--task", "binary", "--loss", "nll"], "takes bce, mse"),
    (["--task", "tertiary"], "invalid choice: 'tertiary'"),
    (["--freeze", "features"], "--freeze features needs --init-from"),
    (["--target", "y"], "--target COLUMN names the label column(s) of a csv:PATH dataset"),
    (["--dataset", "csv:t.csv"], "--target COLUMN"),
    (["--dataset", "csv:t.csv", "--target", "a,b"], "make a multilabel task"),
    (["--positive", "7"], "--positive is for --task binary"),
    (["--dataset", "spiral", "--arch", "cnn"], "it trains an mlp"),
    (["--task", "binary", "--threshold", "1.5"], "threshold must be strictly between 0 and 1"),
])
def test_task_flag_mistakes_exit_2_with_the_reason(flags: list[str], message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(flags)
    assert info.value.code == 2 and message in capsys.readouterr().err


def _train(repo_root: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    return subprocess.run([sys.executable, "-m", "training", *flags], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=240)


def test_the_cli_trains_a_binary_model_from_a_csv(repo_root: Path, tmp_path: Path) -> None:
    rows = [f"{20 + i % 50},{(i * 37) % 100},{int((i * 37) % 100 > 50)}" for i in range(200)]
    (tmp_path / "patients.csv").write_text("age,score,sick\n" + "\n".join(rows) + "\n")
    result = _train(repo_root, "--dataset", f"csv:{tmp_path / 'patients.csv'}", "--target", "sick",
                    "--task", "binary", "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "models"),
                    "--run-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    assert "test ROC AUC" in result.stderr and "model card:" in result.stderr
    manifest = json.loads((tmp_path / "models" / "patients-binary-mlp" / "1" / "manifest.json").read_text())
    assert manifest["task"] == "binary" and manifest["input"]["features"] == ["age", "score"]


def test_a_bad_csv_is_one_clear_error(repo_root: Path, tmp_path: Path) -> None:
    rows = [f"{i},{i % 2}" for i in range(20)] + ["abc,1"]
    (tmp_path / "bad.csv").write_text("x,y\n" + "\n".join(rows) + "\n")
    result = _train(repo_root, "--dataset", f"csv:{tmp_path / 'bad.csv'}", "--target", "y")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "line 22, column 'x': the value is 'abc', not a number" in " ".join(result.stderr.split())
