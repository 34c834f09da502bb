"""Write scikit-learn's Wisconsin breast-cancer table (569 tumours, 30 measurements) to a CSV file.

The label column is ``malignant`` (1 malignant, 0 benign; scikit-learn's own ``target`` is the reverse), so
``--task binary --target malignant`` predicts the class doctors look for. Usage:

    python scripts/breast_cancer_csv.py data/breast_cancer.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def main() -> None:
    """Parse the output path and write the table there."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the CSV file to write")
    args = parser.parse_args()
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([name.replace(" ", "_") for name in bunch.feature_names] + ["malignant"])
        for row, target in zip(bunch.data.tolist(), bunch.target.tolist(), strict=True):
            writer.writerow([f"{value:.6g}" for value in row] + [1 - target])
    print(f"wrote {len(bunch.target)} rows to {args.out}")


if __name__ == "__main__":
    main()
