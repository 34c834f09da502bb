"""The training configuration: one frozen record, built at the edge (the CLI) and passed down."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from training.tasks import DEFAULT_LOSS, LOSSES, TASKS, loss_error

CONV_WIDTHS = {"cnn": 3, "cnn4": 4}  # the nets whose convolution widths --widths sets, and how many

DATASETS = ("mnist", "fashion-mnist", "digits", "spiral")  # plus "folder:PATH" and "csv:PATH"
FREEZE = ("none", "features")
ARCHITECTURES = ("mlp", "cnn", "cnn4", "classic", "resnet")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "step", "cosine", "onecycle")
NAME_FAMILY = {"cnn4": "cnn"}  # architectures whose artifacts are versions of the same model name
EXTRA_FORMATS = ("exported", "aoti")  # written beside the TorchScript file (training/formats.py)

# Adam-family optimisers diverge at SGD's learning rates, so --lr defaults per optimiser. With onecycle the
# learning rate is the peak of the cycle.
DEFAULT_LR = {"sgd": 0.2, "adam": 3e-3, "adamw": 3e-3}

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class ConfigError(ValueError):
    """A setting that cannot work; the message names the setting."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; the manifest records it whole."""

    # data
    dataset: str = "mnist"  # mnist | fashion-mnist | digits | spiral | folder:PATH | csv:PATH
    data_dir: Path = Path("data")
    download: bool = True  # fetch a missing public dataset into data_dir when the network allows
    # Held out of the training split to report validation metrics every epoch; the test split is only
    # touched once, at the end, so the manifest's test accuracy is not tuned on.
    val_fraction: float = 0.05
    image_size: int = 28  # folder:PATH only: images are resized to image_size x image_size
    target: tuple[str, ...] = ()  # csv:PATH only: the label column(s); several make a multilabel task
    # Corrections the service stored (TRAINSERVE_FEEDBACK_DIR): trained on, repeated to make up at least
    # extra_share of each epoch, except the extra_holdout share (by content hash) that judges the run
    # (training/corrections.py).
    extra_data: Path | None = None
    extra_share: float = 0.01
    extra_holdout: float = 0.25
    # task
    task: str = "multiclass"  # multiclass | binary | multilabel (training/tasks.py)
    loss: str = ""  # cross-entropy | nll | mse | bce; "" is the task's usual one (cross-entropy, bce)
    positive: tuple[str, ...] = ()  # binary: the classes that count as positive (e.g. ("7",))
    label_set: tuple[str, ...] = ()  # multilabel from classes: "NAME=CLASS,CLASS,..." per label
    threshold: float = 0.5  # binary and multilabel: the probability at which a label is predicted
    # transfer
    init_from: Path | None = None  # an artifact folder models/NAME/VERSION to start from (a new head)
    freeze: str = "none"  # none | features: with init_from, train only the new head
    # model
    arch: str = "cnn4"  # the recipe of issue 26 (docs/training.md); "cnn" is the compact net before it
    hidden: tuple[int, ...] = (256, 128)  # mlp only: hidden layer widths
    activation: str = "relu"  # mlp only
    widths: tuple[int, ...] = ()  # cnn (3) and cnn4 (4): channels of each convolution; empty: the net's own
    # optimisation
    epochs: int = 13  # the recipe's, chosen on the validation split (docs/benchmarks.md)
    batch_size: int = 128  # global: under torchrun each of N processes takes batch_size / N
    eval_batch_size: int = 1000
    optimizer: str = "sgd"
    lr: float = DEFAULT_LR["sgd"]
    momentum: float = 0.9  # sgd only (Nesterov)
    weight_decay: float = 5e-4  # not applied to biases and norm weights
    schedule: str = "onecycle"
    # An exponential moving average of the weights (and batch-norm statistics) with this decay per step is
    # what the run validates, tests and exports (training/averaging.py); 0: the trained weights themselves.
    ema: float = 0.0
    augment: bool = True  # random warps, batched on tensors (training/augment.py)
    # MNIST-style digits (the others get the plain affine jitter): elastic distortion of up to this many
    # pixels, the share of digits drawn with a thicker or thinner stroke, and whether each warped digit is
    # fitted into 20x20 and centred by mass again, as the service prepares uploads (docs/training.md).
    elastic: float = 1.0
    stroke: float = 0.5
    recentre: bool = False
    # The last epochs train on clean images, so the low-lr end of the schedule and the batch-norm statistics
    # match what the model will be shown (it lifts MNIST test accuracy a little: docs/training.md).
    clean_epochs: int = 1  # never all of them: a one-epoch run is jittered throughout
    seed: int = 1
    # "Not a digit" (MNIST multiclass only: training/outliers.py). Each step also shows the net outlier_batch
    # non-digits (Fashion-MNIST, generated blanks, noise, scribbles), whose cross-entropy against the uniform
    # distribution, times outlier_weight, joins the loss (0: no outlier exposure). The score's threshold
    # flags flag_rate of the validation digits (training/trust.py).
    outlier_weight: float = 0.5
    outlier_batch: int = 16
    flag_rate: float = 0.005
    # run
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int = 0  # data-loader worker processes; the data is in memory, so 0 is right on CPU
    threads: int = 0  # torch intra-op threads; 0 leaves torch's choice (one per physical core)
    dry_run: bool = False  # a few batches end to end, exported under run_dir instead of out
    name: str = "mnist-cnn"  # artifact name: models/<name>/<version>/
    version: str | None = None  # None: the next free version
    out: Path = Path("models")
    # better: into `out` only when the test accuracy is at least the served default's (training/publish.py);
    # always; canary:P: into `out` as a canary answering P % of the default's requests (service/routing)
    publish: str = "better"
    tolerance: float = 0.0  # better: the test accuracy may fall this many points below the default's
    run_dir: Path = Path("runs")  # metrics, plots and TensorBoard events of each run
    # Formats exported beside TorchScript's model.pt; aoti compiles C++ (docs/benchmarks.md#model-formats).
    formats: tuple[str, ...] = EXTRA_FORMATS

    def __post_init__(self) -> None:
        if self.dataset.startswith(("folder:", "csv:")):
            kind = self.dataset.split(":")[0]
            _check(self.dataset != f"{kind}:", f"dataset {kind}:PATH needs a PATH")
        else:
            _choice("dataset", self.dataset, (*DATASETS, "folder:PATH", "csv:PATH"))
        self._check_task()
        _choice("arch", self.arch, ARCHITECTURES)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _check(self.publish in ("better", "always") or canary_percent(self.publish) is not None,
               f"publish {self.publish!r} must be better, always or canary:P (0 < P <= 100)")
        for fmt in self.formats:
            _choice("formats", fmt, EXTRA_FORMATS)
        _positive(epochs=self.epochs, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size,
                  image_size=self.image_size, lr=self.lr)
        _check(bool(self.hidden) and all(h > 0 for h in self.hidden), "hidden must be positive widths")
        _check(not self.widths or len(self.widths) == CONV_WIDTHS.get(self.arch),
               f"widths: {self.arch} takes " + (f"{CONV_WIDTHS[self.arch]} convolution widths"
                                                 if self.arch in CONV_WIDTHS else "none (cnn, cnn4 only)"))
        _check(all(w > 0 for w in self.widths), "widths must be positive")
        _check(0.0 <= self.ema < 1.0, "ema must be in [0, 1): a decay per step, 0 for none")
        _check(0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)")
        _check(0.0 <= self.extra_share < 0.5 and 0.0 <= self.extra_holdout < 1.0
               and 0.0 <= self.tolerance <= 100,
               "extra_share must be in [0, 0.5), extra_holdout in [0, 1) and tolerance in [0, 100] points")
        _check(self.extra_data is None or self.task == "multiclass",
               "--extra-data (corrections the service stored) is for multi-class models")
        _check(self.elastic >= 0 and 0.0 <= self.stroke <= 1.0, "elastic must be >= 0 and stroke in [0, 1]")
        _check(self.outlier_weight >= 0 and self.outlier_batch > 0,
               "outlier_weight must be >= 0 and outlier_batch > 0")
        _check(0.0 < self.flag_rate < 0.5, "flag_rate must be in (0, 0.5)")
        _check(self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight_decay must be >= 0")
        _check(self.workers >= 0 and self.threads >= 0 and self.clean_epochs >= 0,
               "workers, threads and clean_epochs must be >= 0")
        _check(bool(_DEVICE_RE.match(self.device)),
               f"device {self.device!r} must be auto, cpu, cuda or cuda:N")
        _check(bool(re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", self.name)),
               f"name {self.name!r} must be lower-case letters, digits, '.', '_' or '-'")
        _check(self.version is None or bool(re.fullmatch(r"[1-9][0-9]{0,8}", self.version)),
               f"version {self.version!r} must be a positive integer")

    @property
    def feature_data(self) -> bool:
        """Whether the dataset is feature vectors (a CSV table, the spiral) rather than images."""
        return self.dataset.startswith("csv:") or self.dataset == "spiral"

    def _check_task(self) -> None:
        _choice("task", self.task, TASKS)
        if not self.loss:  # the task's usual loss; a frozen record settles it once, here
            object.__setattr__(self, "loss", DEFAULT_LOSS[self.task])
        _choice("loss", self.loss, LOSSES)
        problem = loss_error(self.task, self.loss)
        _check(problem is None, problem or "")
        _check(0.0 < self.threshold < 1.0,
               f"threshold must be strictly between 0 and 1, got {self.threshold}")
        _check(self.dataset.startswith("csv:") == bool(self.target),
               "--target COLUMN names the label column(s) of a csv:PATH dataset (and only there)")
        _check(not self.positive or self.task == "binary", "--positive is for --task binary")
        _check(not self.label_set or self.task == "multilabel", "--label-set is for --task multilabel")
        _check(len(self.target) < 2 or self.task == "multilabel",
               f"{len(self.target)} --target columns make a multilabel task: add --task multilabel")
        _check(not self.feature_data or self.arch == "mlp",
               f"{self.dataset} holds feature vectors: it trains an mlp (--arch mlp), not {self.arch}")
        _choice("freeze", self.freeze, FREEZE)
        _check(self.freeze == "none" or self.init_from is not None,
               "--freeze features needs --init-from models/NAME/VERSION (the features to keep)")

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form, as the manifest records it."""
        return {k: _jsonable(v) for k, v in asdict(self).items()}


def default_name(dataset: str, arch: str, task: str = "multiclass") -> str:
    """The artifact name a run gets unless --name says otherwise: ``<dataset>-<arch>``, or
    ``<dataset>-<task>-<arch>`` for binary and multilabel (never a new version of a multiclass model). The
    compact CNNs share the name ``cnn``: a run of the default cnn4 is the next version of ``mnist-cnn``."""
    arch = NAME_FAMILY.get(arch, arch)
    if dataset.startswith("folder:"):
        dataset = Path(dataset.removeprefix("folder:")).resolve().name
    elif dataset.startswith("csv:"):
        dataset = Path(dataset.removeprefix("csv:")).stem
    slug = re.sub(r"[^a-z0-9._-]+", "-", dataset.lower()).strip("-._") or "folder"
    return f"{slug[:50]}-{arch}" if task == "multiclass" else f"{slug[:40]}-{task}-{arch}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def canary_percent(publish: str) -> float | None:
    """P of ``canary:P`` (a number over 0 and at most 100); None for any other value."""
    kind, _, percent = publish.partition(":")
    try:
        value = float(percent)
    except ValueError:
        return None
    return value if kind == "canary" and 0 < value <= 100 else None


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{name} {value!r} must be one of {', '.join(choices)}")


def _positive(**values: float) -> None:
    for name, value in values.items():
        _check(value > 0, f"{name} must be > 0, got {value}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
