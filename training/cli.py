"""``trainserve-train`` / ``python -m training``: the only place that reads argv.

Flags follow pytorch/examples (kebab-case, defaults in the help). Under ``torchrun --nproc_per_node=N`` the
same command trains with DistributedDataParallel.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from training.config import (
    ACTIVATIONS,
    ARCHITECTURES,
    DEFAULT_LR,
    EXTRA_FORMATS,
    FREEZE,
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
    default_name,
)
from training.tasks import LOSSES, TASKS

_D = TrainConfig()  # the defaults the help text shows
# A team's shared copy of the datasets beside the checkout, which `make train` uses too.
_SHARED_DATA = Path("../shared/datasets")


def default_data_dir() -> Path:
    """The shared copy beside the checkout when it holds MNIST (the rule `make train` follows), else data/."""
    return _SHARED_DATA if (_SHARED_DATA / "mnist").is_dir() else _D.data_dir


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every default stated in the help."""
    p = argparse.ArgumentParser(
        prog="trainserve-train",
        description="Train a classifier (multi-class, binary or multi-label; images or tabular data) and "
                    "export it as a TorchScript artifact with a manifest.",
        epilog="Multi-process: torchrun --nproc_per_node=N -m training [flags] (gloo on CPU, nccl on CUDA).",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=_D.dataset, metavar="NAME",
                      help="mnist, fashion-mnist, digits, spiral, folder:PATH or csv:PATH "
                           f"(default: {_D.dataset})")
    data.add_argument("--target", action="append", default=[], metavar="COLUMN",
                      help="csv:PATH only: the label column; repeat it (or COL,COL) for a multilabel task")
    data.add_argument("--data-dir", type=Path, default=default_data_dir(), metavar="DIR",
                      help=f"where datasets live, e.g. DIR/mnist/*.gz (default: {_SHARED_DATA} when it "
                           f"holds mnist/, else {_D.data_dir}; here: {default_data_dir()})")
    data.add_argument("--no-download", dest="download", action="store_false",
                      help="never download a missing dataset (default: download when the network allows)")
    data.add_argument("--val-fraction", type=float, default=_D.val_fraction, metavar="F",
                      help=f"share of the train split held out to validate on (default: {_D.val_fraction})")
    data.add_argument("--extra-data", type=Path, default=None, metavar="DIR",
                      help="also train on the corrections the service stored under DIR "
                           "(TRAINSERVE_FEEDBACK_DIR; DIR/NAME when there), holding some out to judge the "
                           "run (default: none)")
    data.add_argument("--extra-share", type=float, default=_D.extra_share, metavar="F",
                      help="with --extra-data: the corrections are repeated to make up at least this share "
                           f"of each epoch, each at least once (default: {_D.extra_share:g})")
    data.add_argument("--extra-holdout", type=float, default=_D.extra_holdout, metavar="F",
                      help=f"with --extra-data: the share of corrections held out, chosen by content hash "
                           f"(default: {_D.extra_holdout:g})")
    data.add_argument("--image-size", type=int, default=_D.image_size, metavar="N",
                      help=f"folder:PATH only: resize images to NxN (default: {_D.image_size})")
    model = p.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHITECTURES, default=None,
                       help=f"the net (default: {_D.arch}); csv:PATH and spiral train an mlp")
    model.add_argument("--hidden", type=_widths, default=_D.hidden, metavar="W,W",
                       help="mlp only: hidden layer widths (default: 256,128)")
    model.add_argument("--activation", choices=ACTIVATIONS, default=_D.activation,
                       help=f"mlp only (default: {_D.activation})")
    model.add_argument("--widths", type=_widths, default=_D.widths, metavar="W,W,W[,W]",
                       help="cnn (3) and cnn4 (4): channels of each convolution (default: the net's own, "
                            "12,24,48 and 16,32,64,96)")
    _task_flags(p.add_argument_group("task"))
    _optimisation_flags(p.add_argument_group("optimisation"))
    _outlier_flags(p.add_argument_group("not a digit"))
    _run_flags(p.add_argument_group("run"))
    return p


def _task_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--task", choices=TASKS, default=_D.task,
                   help="multiclass (softmax), binary (one sigmoid) or multilabel (a sigmoid per label) "
                        f"(default: {_D.task})")
    g.add_argument("--loss", choices=LOSSES, default=None,
                   help="cross-entropy, nll or mse (on softmax vs one-hot) for multiclass; bce or mse for "
                        "binary and multilabel (default: cross-entropy, bce)")
    g.add_argument("--positive", type=_names, default=(), metavar="CLASS[,CLASS]",
                   help="binary: the classes that count as positive, e.g. 7 (default: the second of two)")
    g.add_argument("--label-set", action="append", default=[], metavar="NAME=CLASS,CLASS",
                   help="multilabel from a class dataset: one per label, e.g. even=0,2,4,6,8 (repeat it)")
    g.add_argument("--threshold", type=float, default=_D.threshold, metavar="T",
                   help=f"binary and multilabel: the decision probability, kept in the manifest "
                        f"(default: {_D.threshold})")
    g.add_argument("--init-from", type=Path, default=None, metavar="models/NAME/VERSION",
                   help="start from this artifact's weights, with a new head (default: random weights)")
    g.add_argument("--freeze", choices=FREEZE, default=_D.freeze,
                   help="with --init-from: features trains only the new head; none fine-tunes every layer "
                        f"(give it a lower --lr, e.g. 0.02 with sgd) (default: {_D.freeze})")


def _optimisation_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, default=_D.epochs, metavar="N",
                   help=f"passes over the training split (default: {_D.epochs})")
    g.add_argument("--batch-size", type=int, default=_D.batch_size, metavar="N",
                   help=f"examples per step, over all processes (default: {_D.batch_size})")
    g.add_argument("--eval-batch-size", type=int, default=_D.eval_batch_size, metavar="N",
                   help=f"examples per evaluation batch (default: {_D.eval_batch_size})")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=_D.optimizer,
                   help=f"sgd uses Nesterov momentum (default: {_D.optimizer})")
    g.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="learning rate, the peak with onecycle (default: "
                        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_LR.items()) + ")")
    g.add_argument("--momentum", type=float, default=_D.momentum, metavar="M",
                   help=f"sgd only (default: {_D.momentum})")
    g.add_argument("--weight-decay", type=float, default=_D.weight_decay, metavar="WD",
                   help=f"on weights, not on biases or norms (default: {_D.weight_decay})")
    g.add_argument("--schedule", choices=SCHEDULES, default=_D.schedule,
                   help=f"learning-rate schedule (default: {_D.schedule})")
    g.add_argument("--ema", type=float, default=_D.ema, metavar="DECAY",
                   help="validate, test and export an exponential moving average of the weights with this "
                        f"decay per step, 0 for the trained weights themselves (default: {_D.ema:g})")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=_D.augment,
                   help="random affine jitter: rotate, shift, zoom (default: on)")
    g.add_argument("--elastic", type=float, default=_D.elastic, metavar="PX",
                   help="digits: elastic distortion of up to PX pixels, 0 for none "
                        f"(default: {_D.elastic:g})")
    g.add_argument("--stroke", type=float, default=_D.stroke, metavar="P",
                   help=f"digits: share drawn thicker or thinner (default: {_D.stroke:g})")
    g.add_argument("--recentre", action=argparse.BooleanOptionalAction, default=_D.recentre,
                   help="digits: fit each warped digit into 20x20 and centre it by mass again, as the "
                        f"service prepares uploads (default: {'on' if _D.recentre else 'off'})")
    g.add_argument("--clean-epochs", type=int, default=_D.clean_epochs, metavar="N",
                   help=f"last epochs without augmentation (default: {_D.clean_epochs})")
    g.add_argument("--seed", type=int, default=_D.seed, metavar="S", help=f"random seed (default: {_D.seed})")


def _outlier_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--outlier-weight", type=float, default=_D.outlier_weight, metavar="W",
                   help="MNIST: weight of outlier exposure (non-digits pushed towards uniform "
                        f"probabilities), 0 for none (default: {_D.outlier_weight:g})")
    g.add_argument("--outlier-batch", type=int, default=_D.outlier_batch, metavar="N",
                   help=f"MNIST: non-digits per step (default: {_D.outlier_batch})")
    g.add_argument("--flag-rate", type=float, default=_D.flag_rate, metavar="F",
                   help="MNIST: the \"not a digit\" threshold flags this share of the validation digits "
                        f"(default: {_D.flag_rate:g})")


def _run_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--device", default=_D.device, metavar="DEV",
                   help=f"auto, cpu, cuda or cuda:N (default: {_D.device}: cuda if available)")
    g.add_argument("--workers", type=int, default=_D.workers, metavar="N",
                   help=f"data-loader processes / image-decoding threads (default: {_D.workers})")
    g.add_argument("--threads", type=int, default=_D.threads, metavar="N",
                   help="torch CPU threads per process (default: 0, torch's choice)")
    g.add_argument("--dry-run", action="store_true",
                   help="a few batches end to end, exported under --run-dir instead of --out")
    g.add_argument("--name", default=None, metavar="NAME",
                   help="artifact name (default: DATASET-ARCH, e.g. mnist-cnn; DATASET-TASK-ARCH for "
                        "binary and multilabel)")
    g.add_argument("--version", default=None, metavar="V",
                   help="artifact version (default: the next free one)")
    g.add_argument("--out", type=Path, default=_D.out, metavar="DIR",
                   help=f"model repository the artifact goes to (default: {_D.out})")
    g.add_argument("--publish", default=_D.publish, metavar="RULE",
                   help="better: into --out only when the test accuracy is at least that of the version "
                        "served by default, else kept under the run folder; always: into --out; canary:P: "
                        "into --out as a canary that answers P %% of the requests the default gets, the "
                        f"default pinned (docs/operations.md) (default: {_D.publish})")
    g.add_argument("--tolerance", type=float, default=_D.tolerance, metavar="PTS",
                   help="with --publish better: the test accuracy may be this many points below the "
                        f"default's (default: {_D.tolerance:g})")
    g.add_argument("--run-dir", type=Path, default=_D.run_dir, metavar="DIR",
                   help=f"metrics, plots and TensorBoard events per run (default: {_D.run_dir})")
    g.add_argument("--formats", nargs="*", choices=EXTRA_FORMATS, default=_D.formats, metavar="FORMAT",
                   help="formats exported beside the TorchScript model.pt: exported (torch.export), aoti "
                        "(AOTInductor, needs a C++ compiler); the flag alone: TorchScript only "
                        f"(default: {' '.join(_D.formats)})")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the parsed flags describe (per-optimiser lr and DATASET-ARCH name filled in)."""
    values = vars(args).copy()
    values["lr"] = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    tabular = args.dataset.startswith("csv:") or args.dataset == "spiral"
    values["arch"] = args.arch or ("mlp" if tabular else _D.arch)
    values["name"] = args.name or default_name(args.dataset, values["arch"], args.task)
    values["target"] = tuple(name for text in args.target for name in _names(text))
    values["label_set"] = tuple(args.label_set)
    values["loss"] = args.loss or ""
    values["formats"] = tuple(args.formats)
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, export; exit 0 on success, 1 on missing data, divergence or a failed export, 2 on
    bad flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    # Imported only now, so that --help and flag errors answer at once, without loading torch.
    from service.contract.allocator import keep_freed_memory
    from training.datasets import DataError
    from training.distributed import world_from_env
    from training.engine import Diverged
    from training.export import ExportError
    from training.run import run

    try:
        world = world_from_env(os.environ)
        _configure_logging(world.rank)
        keep_freed_memory()  # each step reuses what the last one freed (service/contract/allocator.py)
        run(cfg, world)
    except ConfigError as exc:  # settings only the run can judge, such as --device cuda without a GPU
        parser.error(str(exc))
    except (DataError, ExportError, Diverged) as exc:
        print(_paragraph(f"error: {exc}"), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be positive")
    return widths


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r} names nothing")
    return names


def _configure_logging(rank: int) -> None:
    fmt = "%(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt, stream=sys.stderr)


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)
