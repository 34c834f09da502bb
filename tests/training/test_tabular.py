"""csv:PATH and the spiral: a real CSV file the test writes, its errors, and the standardising module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.data import load_data
from training.datasets import DataError
from training.tabular import FeatureClassifier, feature_stats, load_csv, make_spiral
from training.targets import TargetSpec


def _csv(path: Path, rows: list[str], header: str = "age,height,smoker,disease") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _patients(n: int = 40) -> list[str]:
    return [f"{30 + i},{150 + (i * 7) % 40},{i % 2},{int(i % 2 == 1 and i > 15)}" for i in range(n)]


def test_a_csv_becomes_features_and_named_classes(tmp_path: Path) -> None:
    source = load_csv(_csv(tmp_path / "p.csv", _patients()), ["disease"], multilabel=False)
    assert source.features == ("age", "height", "smoker")
    assert source.classes == ("not disease", "disease")  # a 0/1 column gets readable names
    assert source.train.images.dtype == torch.float32 and source.train.images.shape[1] == 3
    assert len(source.train) + len(source.test) == 40 and len(source.test) == 8
    assert set(source.test.labels.tolist()) == {0, 1}  # the held-out split is stratified


def test_string_targets_are_sorted_classes(tmp_path: Path) -> None:
    rows = [f"{i},{i * 2},{['cat', 'dog', 'bunny'][i % 3]}" for i in range(30)]
    source = load_csv(_csv(tmp_path / "pets.csv", rows, "weight,size,kind"), ["kind"], multilabel=False)
    assert source.classes == ("bunny", "cat", "dog")


def test_several_targets_are_multilabel_columns(tmp_path: Path) -> None:
    rows = [f"{i},{i % 2},{int(i > 10)}" for i in range(30)]
    source = load_csv(_csv(tmp_path / "m.csv", rows, "x,grey,long_haired"), ["grey", "long_haired"],
                      multilabel=True)
    assert source.classes == ("grey", "long_haired") and source.features == ("x",)
    assert source.train.labels.shape[1] == 2 and source.train.labels.dtype == torch.float32


@pytest.mark.parametrize(("rows", "targets", "message"), [
    (["30,170,yes,1", *_patients(20)], ["disease"], "line 2, column 'smoker': the value is 'yes', not a"),
    ([*_patients(5), "31,,0,1", *_patients(10)], ["disease"], "line 7, column 'height': the value is"),
    (_patients(20), ["outcome"], "target column(s) ['outcome'] not in the header"),
    ([*_patients(20), "1,2,3"], ["disease"], "line 22: 3 values for the 4 columns"),
    (_patients(5), ["disease"], "at least 10"),
    (_patients(20), ["smoker", "disease"], "need --task multilabel"),
])
def test_bad_csv_files_name_the_column_and_line(tmp_path: Path, rows: list[str], targets: list[str],
                                                message: str) -> None:
    with pytest.raises(DataError) as info:
        load_csv(_csv(tmp_path / "bad.csv", rows), targets, multilabel=False)
    assert message in str(info.value)


def test_multilabel_targets_must_be_zero_or_one(tmp_path: Path) -> None:
    rows = [f"{i},{i},2,0" for i in range(12)]
    with pytest.raises(DataError, match="line 2, target column 'smoker': '2' must be 0 or 1"):
        load_csv(_csv(tmp_path / "m.csv", rows), ["smoker", "disease"], multilabel=True)


def test_a_missing_file_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs a CSV file with a header row"):
        load_data(f"csv:{tmp_path / 'none.csv'}", tmp_path, targets=TargetSpec(columns=("y",)))


def test_the_spiral_is_three_interleaved_arms() -> None:
    source = make_spiral(points=200)
    assert source.classes == ("arm 0", "arm 1", "arm 2") and source.features == ("x", "y")
    assert len(source.train) + len(source.test) == 600
    radius = source.train.images.norm(dim=1)
    assert float(radius.max()) <= 1.0 + 1e-6
    assert torch.equal(make_spiral(points=200).train.images, source.train.images)  # the same every time


def test_standardisation_is_learned_on_train_and_applied_inside_the_module(tmp_path: Path) -> None:
    data = load_data(f"csv:{_csv(tmp_path / 'p.csv', _patients())}", tmp_path, val_fraction=0.1,
                     targets=TargetSpec(task="binary", columns=("disease",)))
    mean, std = feature_stats(data.train.images)
    assert data.mean == pytest.approx(mean) and data.std == pytest.approx(std)
    assert data.train.labels.shape == (len(data.train), 1)  # binary targets are [N, 1] floats
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x)
            return x[:, :1]

    FeatureClassifier(Probe(), data.mean, data.std)(data.train.images)
    standardised = seen[0]
    assert torch.allclose(standardised.mean(dim=0), torch.zeros(3), atol=1e-4)
    assert torch.allclose(standardised.std(dim=0), torch.ones(3), atol=1e-3)
