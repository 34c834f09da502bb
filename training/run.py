"""Compose one training run: data, net, optimiser, the epoch loop, the test pass, reports and export.

``run(cfg, world)`` is the whole of ``python -m training`` after argument parsing. Under torchrun every
process trains its share of each batch; only rank 0 evaluates, writes reports and exports the artifact.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from service.contract.manifest import next_version, read_manifest, verify_checksum
from training import outcome, outliers
from training.augment import AffineJitter, DigitJitter
from training.averaging import WeightAverage
from training.config import ConfigError, TrainConfig
from training.corrections import Corrections, load_corrections, with_corrections
from training.data import DataSplits, ImageSet, load_data, make_loader
from training.distributed import SINGLE, World, barrier, process_group, resolve_device, sum_across
from training.engine import Diverged, EpochStats, StepCallback, evaluate, train_one_epoch
from training.export import ArtifactInfo, PixelClassifier, export, load_scripted
from training.nets import DEFAULT_WIDTHS, build_net, count_macs, count_parameters
from training.optim import build_optimizer, build_scheduler, current_lr
from training.outliers import OutlierSets, load_outliers
from training.publish import HeldOut, pin_default, publish_root, served_default, start_canary
from training.runlog import RunLog
from training.tabular import FeatureClassifier
from training.targets import TargetSpec
from training.tasks import Objective
from training.transfer import start_from
from training.trust import Scorer, assess

log = logging.getLogger(__name__)

DRY_RUN_BATCHES = 3  # per split: enough to exercise every step, few enough for a smoke test


@dataclass(frozen=True)
class Destination:
    """Where a run writes: its run folder (metrics, plots, events) and the artifact's root and version."""

    run_folder: Path
    out: Path
    version: str


def run(cfg: TrainConfig, world: World = SINGLE) -> Path | None:
    """Train, test and export as ``cfg`` says; return the artifact folder on rank 0, None on other ranks."""
    started = time.perf_counter()
    if cfg.batch_size % world.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by the {world.size} processes")
    device = resolve_device(cfg.device, world)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    with process_group(world, device):
        data = _load_data(cfg, world)
        fixes = None
        if cfg.extra_data is not None:
            fixes = load_corrections(cfg.extra_data, cfg.name, data.classes, data.input_shape,
                                     cfg.extra_holdout, cfg.extra_share, len(data.train), data.features)
            data = dataclasses.replace(data, train=with_corrections(data.train, fixes))
        odd = load_outliers(cfg.data_dir, cfg.download) if outliers.applies(cfg.dataset, cfg.task) else None
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts them)
        model, cfg, origin = _initial_model(cfg, data)
        # Module.to takes a device and a memory format together (torch's _parse_to); its overloads omit it
        model = model.to(device, memory_format=_layout(cfg.arch))  # type: ignore[call-overload]
        dest = _destination(cfg) if world.is_main else None
        with RunLog(dest.run_folder) if dest else nullcontext() as runlog:
            if dest:
                log.info("%s: %s %s on %s (%d train, %d val, %d test examples), %s loss, %d trainable "
                         "parameters, %s, run folder %s", cfg.name, cfg.task, cfg.arch, data.source.name,
                         len(data.train), len(data.val), len(data.test), cfg.loss, count_parameters(model),
                         device, dest.run_folder)
            epochs, model = fit(cfg, world, device, data, model, runlog, odd)
            if dest is None or runlog is None:  # not rank 0
                return None
            return _finish(cfg, device, data, model, runlog, dest, epochs, time.perf_counter() - started,
                           origin, odd, fixes)


def _initial_model(cfg: TrainConfig, data: DataSplits) -> tuple[nn.Module, TrainConfig, dict[str, Any]]:
    """A fresh net in its input wrapper, or (--init-from) an artifact's with a new head; the config's
    architecture becomes the artifact's."""
    outputs = 1 if cfg.task == "binary" else len(data.classes)
    if cfg.init_from is not None:
        start = start_from(cfg.init_from, data.input_shape, outputs, freeze=cfg.freeze == "features",
                           labels=data.classes, task=cfg.task)
        cfg = dataclasses.replace(cfg, arch=start.architecture, widths=start.widths)
        return start.model, cfg, start.origin
    # The manifest records the widths the net is built with, so that a later change of the defaults
    # cannot rebuild this artifact's net (--init-from, add_formats) differently.
    cfg = dataclasses.replace(cfg, widths=cfg.widths or DEFAULT_WIDTHS.get(cfg.arch, ()))
    net = build_net(cfg.arch, data.input_shape, outputs, hidden=cfg.hidden, activation=cfg.activation,
                    widths=cfg.widths)
    wrapper = FeatureClassifier if data.features else PixelClassifier
    return wrapper(net, data.mean, data.std), cfg, {}


def _objective(cfg: TrainConfig) -> Objective:
    return Objective(task=cfg.task, loss=cfg.loss, threshold=cfg.threshold)


def fit(cfg: TrainConfig, world: World, device: torch.device, data: DataSplits, model: nn.Module,
        runlog: RunLog | None, odd: OutlierSets | None = None) -> tuple[int, nn.Module]:
    """The epoch loop; rank 0 validates after every epoch and logs one summary line. Returns the epochs
    run and the model to test and export: with ``--ema``, the average of the trained weights (its validation
    figures are the ones logged, the trained weights' beside them as ``raw_val_*``)."""
    loader = make_loader(data.train, cfg.batch_size // world.size, shuffle=True, seed=cfg.seed,
                         workers=cfg.workers, pin_memory=device.type == "cuda", rank=world.rank,
                         world_size=world.size)
    steps = min(len(loader), DRY_RUN_BATCHES) if cfg.dry_run else len(loader)
    epochs = 1 if cfg.dry_run else cfg.epochs
    trained = _parallel(model, world, device)
    optimizer = build_optimizer(cfg.optimizer, trained, cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = build_scheduler(cfg.schedule, optimizer, steps * epochs)
    augment = _augmentation(cfg, world, data)
    average = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    exposure = None
    if odd is not None and cfg.outlier_weight > 0:
        draws = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + world.rank)
        exposure = outliers.batches(odd.train, cfg.outlier_batch // world.size or 1, draws)
    for epoch in range(1, epochs + 1):
        # torch types a loader's sampler as any Sampler; make_loader's is a DistributedSampler
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        started = time.perf_counter()
        jitter = augment if epoch <= epochs - min(cfg.clean_epochs, epochs - 1) else None
        with _progress(f"epoch {epoch}/{epochs}", steps, enabled=runlog is not None) as on_step:
            stats = train_one_epoch(trained, islice(loader, steps), optimizer, device, scheduler=scheduler,
                                    augment=jitter, on_step=on_step, memory_format=_layout(cfg.arch),
                                    objective=_objective(cfg), outliers=exposure,
                                    outlier_weight=cfg.outlier_weight, average=average)
        loss_sum, correct, examples = sum_across(world, stats.loss_sum, stats.correct, stats.examples)
        stats = EpochStats(loss_sum, correct, int(examples))
        if not math.isfinite(stats.loss):
            raise Diverged(f"epoch {epoch}: the training loss is {stats.loss}, the run diverged; lower --lr "
                           f"(now {cfg.lr:g}; fine-tuning a whole --init-from net needs about a tenth of "
                           "the usual rate)")
        if runlog is not None:
            record = {"epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
                      "train_examples": int(stats.examples),
                      **_validate(cfg, device, data, average.model if average else model),
                      **({f"raw_{k}": v for k, v in _validate(cfg, device, data, model).items()}
                         if average else {}),
                      "lr": current_lr(optimizer), "seconds": round(time.perf_counter() - started, 2)}
            runlog.write(record, step=epoch)
            log.info(_summary(record, epochs))
    return epochs, average.model if average else model


def _finish(cfg: TrainConfig, device: torch.device, data: DataSplits, model: nn.Module, runlog: RunLog,
            dest: Destination, epochs: int, seconds: float, origin: dict[str, Any],
            odd: OutlierSets | None, fixes: Corrections | None = None) -> Path:
    """Rank 0 after training: test once, draw the reports, export the artifact."""
    objective = _objective(cfg)
    test_set = _limit(data.test, cfg.eval_batch_size, cfg.dry_run)
    test = evaluate(model, make_loader(test_set, cfg.eval_batch_size, shuffle=False), device,
                    len(data.classes), _layout(cfg.arch), objective)
    runlog.write({"split": "test", "test_loss": test.loss, "test_accuracy": test.accuracy,
                  "train_seconds": round(seconds, 1)})
    log.info("test accuracy %.2f %% (loss %.4f) after %d epoch(s), %.0f s", 100 * test.accuracy,
             test.loss, epochs, seconds)
    metrics = _metrics(outcome.task_metrics(test, data.classes, objective), runlog.history)
    if "roc_auc" in metrics:
        log.info("test ROC AUC %.4f, F1 %.4f at threshold %g", metrics["roc_auc"] or float("nan"),
                 metrics["f1"], cfg.threshold)
    limit = DRY_RUN_BATCHES * cfg.eval_batch_size if cfg.dry_run else None
    trust = assess(Scorer(model, device, _layout(cfg.arch), cfg.eval_batch_size), data, objective,
                   runlog.path.parent, odd=odd, flag_rate=cfg.flag_rate, limit=limit)
    metrics |= trust.metrics
    held_out = _judge_corrections(cfg, device, data, model, fixes, dest.out) if fixes else None
    if held_out is not None:
        metrics["corrections_accuracy"] = round(held_out.accuracy, 6)
    files = outcome.draw(runlog, test, test_set, data, objective, model, metrics) + trust.figures
    info = ArtifactInfo(
        name=cfg.name, version=dest.version, architecture=cfg.arch, labels=data.classes,
        input_shape=data.input_shape, metrics=metrics, training=cfg.to_dict(),
        dataset=data.identity() | _outlier_identity(odd, cfg)
        | ({"corrections": fixes.identity() | _held_out_identity(held_out)} if fixes else {}),
        ink=data.source.ink, image_preprocessing=data.source.image_preprocessing,
        extra={"epochs_run": epochs, "train_seconds": round(seconds, 1), "dry_run": cfg.dry_run,
               "macs_per_example": count_macs(model.get_submodule("net"), data.input_shape),
               "device": str(device),
               **({"init_from": origin} if origin else {})},
        task=cfg.task, threshold=cfg.threshold, features=data.features, scaling=_scaling(data),
        calibration=trust.calibration, outliers=trust.outliers,
    )
    runlog.close()  # flushed before export copies metrics.jsonl into the artifact
    out = dest.out if cfg.dry_run else publish_root(dest.out, dest.run_folder / "models", cfg.name,
                                                    test.accuracy, cfg.publish, cfg.tolerance, held_out)
    # A canary: the default is pinned before the new version appears, the canary started once it is there.
    canary = not cfg.dry_run and pin_default(out, cfg.name, cfg.publish) is not None
    folder = export(model, info, out, probe=data.test.images[:64], reports=files, formats=cfg.formats)
    if canary:
        start_canary(out, cfg.name, folder.name, cfg.publish)
    return folder


def _judge_corrections(cfg: TrainConfig, device: torch.device, data: DataSplits, model: nn.Module,
                       fixes: Corrections, repository: Path) -> HeldOut | None:
    """The run's and the served default's accuracy on the corrections the run held out (None: none held
    out); the run's accuracy on those it trained on is logged too."""
    def accuracy(net: nn.Module, examples: ImageSet, on: torch.device) -> float:
        layout = _layout(cfg.arch) if on == device else torch.contiguous_format
        return evaluate(net, make_loader(examples, cfg.eval_batch_size, shuffle=False), on, len(data.classes),
                        layout, _objective(cfg)).accuracy

    trained = accuracy(model, fixes.trained, device)
    if not len(fixes.held_out):
        log.warning("no correction held out: the publishing rule judges this run by its test accuracy alone")
        log.info("corrections trained on: accuracy %.1f %% (%d)", 100 * trained, len(fixes.trained))
        return None
    version = served_default(repository, cfg.name)
    default = 0.0
    if version is not None:  # its TorchScript file, as the contract names and verifies it
        folder = repository / cfg.name / version
        served = load_scripted(verify_checksum(read_manifest(folder), folder))
        default = accuracy(served, fixes.held_out, torch.device("cpu"))
    held_out = HeldOut(len(fixes.held_out), accuracy(model, fixes.held_out, device), default, version or "")
    log.info("corrections: accuracy %.1f %% on the %d trained on, %.1f %% on the %d held out (version %s "
             "served by default: %.1f %%)", 100 * trained, len(fixes.trained), 100 * held_out.accuracy,
             held_out.examples, version or "-", 100 * default)
    return held_out


def _held_out_identity(held_out: HeldOut | None) -> dict[str, Any]:
    if held_out is None:
        return {}
    return {"held_out_accuracy": round(held_out.accuracy, 6),
            "default_version": held_out.default_version,
            "default_held_out_accuracy": round(held_out.default_accuracy, 6)}


def _outlier_identity(odd: OutlierSets | None, cfg: TrainConfig) -> dict[str, Any]:
    """The manifest's ``dataset.outliers``: what the net was shown as "none of the classes"."""
    if odd is None:
        return {}
    return {"outliers": {"fashion_mnist": odd.source, "generated": outliers.GENERATED_TRAIN,
                         "train_examples": sum(map(len, odd.train)) if cfg.outlier_weight > 0 else 0}}


def _scaling(data: DataSplits) -> dict[str, Any]:
    """The manifest's description of the standardisation the module applies to feature inputs."""
    if not data.features:
        return {}
    return {"method": "standardize", "applied_by": "model", "fitted_on": "train split",
            "mean": dict(zip(data.features, data.mean, strict=True)),
            "std": dict(zip(data.features, data.std, strict=True))}


def _load_data(cfg: TrainConfig, world: World) -> DataSplits:
    """Rank 0 reads first (it may download); the others read once it is done."""
    def load() -> DataSplits:
        return load_data(cfg.dataset, cfg.data_dir, download=cfg.download, val_fraction=cfg.val_fraction,
                         image_size=cfg.image_size, workers=cfg.workers,
                         targets=TargetSpec(cfg.task, cfg.target, cfg.positive, cfg.label_set))

    data = load() if world.is_main else None
    barrier(world)
    return data if data is not None else load()


def _destination(cfg: TrainConfig) -> Destination:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_folder = cfg.run_dir / f"{cfg.name}-{stamp}"
    # A dry run's half-trained artifact must never become the version the service serves by default.
    out = run_folder / "models" if cfg.dry_run else cfg.out
    return Destination(run_folder=run_folder, out=out, version=cfg.version or next_version(out, cfg.name))


def _layout(arch: str) -> torch.memory_format:
    """Conv nets train about a third faster with channels-last activations (measured on a 2-core CPU)."""
    return torch.contiguous_format if arch == "mlp" else torch.channels_last


def _parallel(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    if not world.distributed:
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _augmentation(cfg: TrainConfig, world: World, data: DataSplits) -> Any:
    if not cfg.augment or cfg.feature_data:  # the jitter is an image transform
        return None
    # Each rank draws its own jitter; the seed keeps runs repeatable.
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + world.rank)
    digits = data.source.image_preprocessing == "mnist" and data.input_shape[0] == 1
    jitter = (DigitJitter(elastic=cfg.elastic, stroke=cfg.stroke, recentre=cfg.recentre) if digits
              else AffineJitter())
    return functools.partial(jitter, generator=generator)


def _validate(cfg: TrainConfig, device: torch.device, data: DataSplits, model: nn.Module) -> dict[str, float]:
    if not len(data.val):
        return {}
    val = _limit(data.val, cfg.eval_batch_size, cfg.dry_run)
    result = evaluate(model, make_loader(val, cfg.eval_batch_size, shuffle=False), device, len(data.classes),
                      _layout(cfg.arch), _objective(cfg))
    return {"val_loss": result.loss, "val_accuracy": result.accuracy}


def _limit(data: ImageSet, batch_size: int, dry_run: bool) -> ImageSet:
    n = min(len(data), DRY_RUN_BATCHES * batch_size) if dry_run else len(data)
    return ImageSet(data.images[:n], data.labels[:n])


def _metrics(metrics: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    last = [row for row in history if "val_accuracy" in row][-1:]
    if last:
        metrics.update(val_accuracy=round(last[0]["val_accuracy"], 6), val_loss=round(last[0]["val_loss"], 6))
    return metrics


def _summary(record: dict[str, Any], epochs: int) -> str:
    val = (f"  val loss {record['val_loss']:.4f} acc {100 * record['val_accuracy']:.2f}%"
           if "val_loss" in record else "")
    if "raw_val_loss" in record:  # --ema: the average's figures, then the trained weights'
        val += f" (raw {record['raw_val_loss']:.4f} {100 * record['raw_val_accuracy']:.2f}%)"
    return (f"epoch {record['epoch']:>2}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {100 * record['train_accuracy']:.2f}%{val}  lr {record['lr']:.3g}  "
            f"{record['seconds']:.1f}s")


@contextmanager
def _progress(desc: str, total: int, enabled: bool) -> Iterator[StepCallback]:
    """A tqdm bar for one epoch, fed by the engine's step callback; drawn on a terminal only."""
    bar = tqdm(total=total, desc=desc, unit="batch", leave=False, disable=None if enabled else True)

    def on_step(step: int, loss: float, accuracy: float) -> None:
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * accuracy:.2f}%", refresh=False)

    try:
        yield on_step
    finally:
        bar.close()
