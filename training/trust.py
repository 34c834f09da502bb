"""How far a trained model's answers can be trusted, measured at export: the temperature that calibrates it,
its calibration error on the test split and on other-style digits, and the "not a digit" score's threshold
with how well it separates digits from Fashion-MNIST and generated non-digits.

Everything chosen here (the temperature, the threshold) is chosen on the validation split; the test split
and the other sets are only measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import calibration, nondigits, reports
from training.data import DataSplits, ImageSet
from training.engine import pixels
from training.outliers import OutlierSets
from training.rendered import TEST_SEED, render_digits
from training.tasks import Objective

log = logging.getLogger(__name__)

SCORE = "1 - max probability"  # the "not a digit" score, from the calibrated probabilities
RENDER_PER_FONT = 15  # renderings of each digit in each font: about 3,000 other-style digits


@dataclass(frozen=True)
class Trust:
    """What the manifest records about calibration and outliers, and the figures that show it."""

    calibration: dict[str, Any]
    outliers: dict[str, Any] | None
    metrics: dict[str, Any]
    figures: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class Scorer:
    """Logits of image batches from the trained model, in evaluation mode."""

    model: nn.Module
    device: torch.device
    memory_format: torch.memory_format
    batch_size: int = 1000

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Float64 logits of uint8 ``images`` on the CPU."""
        self.model.eval()
        return torch.cat([self.model(pixels(chunk, self.device, self.memory_format)).double().cpu()
                          for chunk in images.split(self.batch_size)])


def assess(scorer: Scorer, data: DataSplits, objective: Objective, folder: Path, *,
           odd: OutlierSets | None, flag_rate: float, limit: int | None = None) -> Trust:
    """Fit the temperature on the validation split, measure calibration, and (with ``odd``) set the "not a
    digit" threshold; ``limit`` caps every set (dry runs)."""
    val, test = _cap(data.val, limit), _cap(data.test, limit)
    if not len(val):
        log.warning("no validation split (--val-fraction 0): the probabilities are left uncalibrated")
        return Trust(calibration={}, outliers=None, metrics={})
    val_logits, test_logits = scorer(val.images), scorer(test.images)
    temperature = calibration.fit_temperature(val_logits, val.labels, objective)
    before = objective.losses(val_logits, val.labels).mean().item()
    after = objective.losses(val_logits / temperature, val.labels).mean().item()
    entry = {"method": "temperature", "temperature": temperature, "fitted_on": "validation split",
             "examples": len(val), "val_loss_before": round(before, 6), "val_loss_after": round(after, 6)}
    curves = {"test split": _curve(test_logits, test.labels, objective, temperature)}
    metrics = {"test_ece": round(curves["test split"].ece, 6),
               "test_ece_uncalibrated": round(_curve(test_logits, test.labels, objective).ece, 6)}
    if odd is not None:  # a digit model: other people's digits
        drawn = _cap(render_digits(RENDER_PER_FONT if limit is None else 1, TEST_SEED), limit)
        drawn_logits = scorer(drawn.images)
        curves["other-style digits"] = _curve(drawn_logits, drawn.labels, objective, temperature)
        metrics |= {"other_style_accuracy": round((drawn_logits.argmax(1) == drawn.labels).double().mean()
                                                  .item(), 6),
                    "other_style_ece": round(curves["other-style digits"].ece, 6),
                    "other_style_examples": len(drawn)}
    figures = [reports.plot_reliability(curves, folder / reports.RELIABILITY_FILE)]
    log.info("temperature %.3f (validation loss %.4f -> %.4f); ECE %s", temperature, before, after,
             ", ".join(f"{name} {100 * c.ece:.2f} %" for name, c in curves.items()))
    if odd is None:
        return Trust(calibration=entry, outliers=None, metrics=metrics, figures=figures)
    spec, found, figure = _outliers(scorer, val_logits, test_logits, odd, temperature, flag_rate, limit,
                                    folder)
    return Trust(calibration=entry, outliers=spec, metrics=metrics | found, figures=[*figures, figure])


def _outliers(scorer: Scorer, val_logits: torch.Tensor, test_logits: torch.Tensor, odd: OutlierSets,
              temperature: float, flag_rate: float, limit: int | None,
              folder: Path) -> tuple[dict[str, Any], dict[str, Any], Path]:
    """The threshold (flags ``flag_rate`` of the validation digits) and what it does on the other sets."""
    from sklearn.metrics import roc_auc_score

    def score(logits: torch.Tensor) -> torch.Tensor:
        return outlier_scores(logits, temperature)

    val, test = score(val_logits), score(test_logits)
    threshold, lowered = choose_threshold(val, score(scorer(_cap_images(odd.generated_val, limit))),
                                          odd.generated_val_kinds, flag_rate)
    fashion = score(scorer(_cap_images(odd.fashion_test, limit)))
    generated = score(scorer(_cap_images(odd.generated_test, limit)))
    kinds = odd.generated_kinds[:len(generated)]

    def auroc(outside: torch.Tensor) -> float:
        labels = [0] * len(test) + [1] * len(outside)
        return round(float(roc_auc_score(labels, torch.cat([test, outside]).numpy())), 6)

    def flagged(scores: torch.Tensor) -> float:
        return round((scores >= threshold).double().mean().item(), 6) if len(scores) else 0.0

    metrics: dict[str, Any] = {
        "ood_auroc_fashion_mnist": auroc(fashion), "ood_auroc_generated": auroc(generated),
        "test_flagged": flagged(test), "val_flagged": flagged(val), "fashion_mnist_flagged": flagged(fashion),
        "generated_flagged": {kind: flagged(generated[kinds == k]) for k, kind in enumerate(nondigits.KINDS)}}
    chosen = (f"validation split: the score that {100 * flag_rate:g} % of its {len(val)} digits reach"
              + (", lowered to flag every blank, solid and noise image of a validation set of generated "
                 "non-digits" if lowered else "; every blank, solid and noise image of a validation set of "
                 "generated non-digits reaches it"))
    spec = {"score": SCORE, "threshold": threshold, "flag_rate": flag_rate, "meaning": "not a digit",
            "chosen_on": chosen, "inputs": "image"}
    log.info("not a digit: threshold %.4f; AUROC against Fashion-MNIST %.4f, generated %.4f; flags %.2f %% "
             "of test digits", threshold, metrics["ood_auroc_fashion_mnist"], metrics["ood_auroc_generated"],
             100 * metrics["test_flagged"])
    sets = {"MNIST test": test, "Fashion-MNIST test": fashion, "generated": generated}
    figure = reports.plot_outliers(sets, threshold, folder / reports.OUTLIERS_FILE)
    return spec, metrics, figure


def outlier_scores(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The "not a digit" score (``SCORE``) of each row of ``logits`` at ``temperature``."""
    return 1.0 - (logits / temperature).softmax(dim=1).max(dim=1).values


def choose_threshold(digits: torch.Tensor, generated: torch.Tensor, kinds: torch.Tensor,
                     flag_rate: float) -> tuple[float, bool]:
    """The score ``flag_rate`` of the validation ``digits`` reach, lowered (True) where a blank, solid or
    noise image of the validation set of ``generated`` non-digits scores less: those must all be flagged."""
    threshold = torch.quantile(digits, 1.0 - flag_rate).item()
    must = nondigits.must_flag(kinds[:len(generated)])
    lowest = generated[must].min().item() if must.any() else threshold
    # Flagged means score >= threshold; the margin covers the service's float32 against float64 here.
    margin = 1e-4
    return (round(threshold, 6), False) if lowest >= threshold + margin else (round(lowest - margin, 6), True)


def _curve(logits: torch.Tensor, labels: torch.Tensor, objective: Objective,
           temperature: float = 1.0) -> calibration.Reliability:
    return calibration.reliability(*calibration.decisions(logits, labels, objective, temperature))


def _cap(split: ImageSet, limit: int | None) -> ImageSet:
    return split if limit is None else ImageSet(split.images[:limit], split.labels[:limit])


def _cap_images(images: torch.Tensor, limit: int | None) -> torch.Tensor:
    return images if limit is None else images[:limit]
