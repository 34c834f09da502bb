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
    OPTIMIZERS,
    SCHEDULES,
    ConfigError,
    TrainConfig,
    default_name,
)

_D = TrainConfig()  # the defaults the help text shows
# A team's shared copy of the datasets beside the checkout, which `make train` uses too.
_SHARED_DATA = Path("../shared/datasets")


def default_data_dir() -> Path:
    """``data/`` if it exists, else the shared copy beside the checkout if it exists, else ``data/``."""
    return _SHARED_DATA if _SHARED_DATA.is_dir() and not _D.data_dir.is_dir() else _D.data_dir


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every default stated in the help."""
    p = argparse.ArgumentParser(
        prog="trainserve-train",
        description="Train an image classifier and export it as a TorchScript artifact with a manifest.",
        epilog="Multi-process: torchrun --nproc_per_node=N -m training [flags] (gloo on CPU, nccl on CUDA).",
    )
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=_D.dataset, metavar="NAME",
                      help=f"mnist, fashion-mnist, digits or folder:PATH (default: {_D.dataset})")
    data.add_argument("--data-dir", type=Path, default=default_data_dir(), metavar="DIR",
                      help=f"where datasets live, e.g. DIR/mnist/*.gz (default: {_D.data_dir}, or "
                           f"{_SHARED_DATA} when only that exists; here: {default_data_dir()})")
    data.add_argument("--no-download", dest="download", action="store_false",
                      help="never download a missing dataset (default: download when the network allows)")
    data.add_argument("--val-fraction", type=float, default=_D.val_fraction, metavar="F",
                      help=f"share of the train split held out to validate on (default: {_D.val_fraction})")
    data.add_argument("--image-size", type=int, default=_D.image_size, metavar="N",
                      help=f"folder:PATH only: resize images to NxN (default: {_D.image_size})")
    model = p.add_argument_group("model")
    model.add_argument("--arch", choices=ARCHITECTURES, default=_D.arch,
                       help=f"the net (default: {_D.arch})")
    model.add_argument("--hidden", type=_widths, default=_D.hidden, metavar="W,W",
                       help="mlp only: hidden layer widths (default: 256,128)")
    model.add_argument("--activation", choices=ACTIVATIONS, default=_D.activation,
                       help=f"mlp only (default: {_D.activation})")
    _optimisation_flags(p.add_argument_group("optimisation"))
    _run_flags(p.add_argument_group("run"))
    return p


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
    g.add_argument("--augment", action=argparse.BooleanOptionalAction, default=_D.augment,
                   help="random affine jitter: rotate, shift, zoom (default: on)")
    g.add_argument("--clean-epochs", type=int, default=_D.clean_epochs, metavar="N",
                   help=f"last epochs without augmentation (default: {_D.clean_epochs})")
    g.add_argument("--seed", type=int, default=_D.seed, metavar="S", help=f"random seed (default: {_D.seed})")


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
                   help="artifact name (default: DATASET-ARCH, e.g. mnist-cnn)")
    g.add_argument("--version", default=None, metavar="V",
                   help="artifact version (default: the next free one)")
    g.add_argument("--out", type=Path, default=_D.out, metavar="DIR",
                   help=f"model repository the artifact goes to (default: {_D.out})")
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
    values["name"] = args.name or default_name(args.dataset, args.arch)
    values["formats"] = tuple(args.formats)
    return TrainConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse flags, train, export; exit 0 on success, 1 on missing data or a failed export, 2 on bad flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    # Imported only now, so that --help and flag errors answer at once, without loading torch.
    from service.server.allocator import keep_freed_memory
    from training.datasets import DataError
    from training.distributed import world_from_env
    from training.export import ExportError
    from training.run import run

    try:
        world = world_from_env(os.environ)
        _configure_logging(world.rank)
        keep_freed_memory()  # each step reuses what the last one freed (service/server/allocator.py)
        run(cfg, world)
    except ConfigError as exc:  # settings only the run can judge, such as --device cuda without a GPU
        parser.error(str(exc))
    except (DataError, ExportError) as exc:
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


def _configure_logging(rank: int) -> None:
    fmt = "%(message)s" if rank == 0 else f"[rank {rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt, stream=sys.stderr)


def _paragraph(text: str) -> str:
    return textwrap.fill(text, width=100, break_long_words=False, break_on_hyphens=False)
