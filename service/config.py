"""Service settings: one frozen dataclass, read from the environment once, at the edge.

Every setting is a ``TRAINSERVE_*`` variable (docs/settings.md lists them all). A bad value stops
start-up with a message that names the variable and says what it accepts; nothing falls back silently.
"""

from __future__ import annotations

import functools
import logging.config
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from service.logs import logging_config
from service.policy import VersionPolicy

T = TypeVar("T")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:[0-9]+)$")
# A bearer token (RFC 6750 token68 characters): long enough not to be guessed, short enough to bound.
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
_ORIGIN_RE = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
MODEL_FORMATS = ("auto", "torchscript", "exported", "aoti")  # auto, then the contract's FORMATS
_BIND_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$|^unix:.+$")
_GRPC_BIND_RE = re.compile(_BIND_RE.pattern + "|^off$")


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _cpu_count(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The cores this process may use: its CPU affinity, capped by a container's CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))  # a container's cpuset, not the host's cores
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, min(cores, math.ceil(quota)) if quota else cores)


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs granted by the cgroup's CFS quota (Kubernetes' CPU limit), or None when unlimited or unknown."""
    try:  # cgroup v2: "max 100000" or "<quota> <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: quota -1 means unlimited
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs to start; built by :meth:`from_env`, passed down explicitly."""

    model_dir: Path = Path("models")
    # auto: the first CUDA device when torch sees one, else the CPU.
    device: str = "auto"
    # CUDA only: run the model in float16 (inputs are cast inside the module).
    half: bool = False
    # Which of an artifact's files to serve: auto (the fastest that loads on this device), torchscript,
    # exported or aoti; a format an artifact lacks or that cannot run here falls back to the next one its
    # manifest lists, with a log line.
    model_format: str = "auto"
    bind: str = "127.0.0.1:8000"
    # The Open Inference Protocol's gRPC service (Triton's port by default); "off": none.
    grpc_bind: str = "127.0.0.1:8001"
    # gRPC front-end processes; each runs one event loop and binds the same port (SO_REUSEPORT). 0: as many
    # as the HTTP workers (one loop is the limit at 64 calls in flight: docs/benchmarks.md#grpc); one on a
    # unix: socket, which only one process can hold.
    grpc_workers: int = 0
    # Where the HTTP workers' readiness looks for the gRPC front end (set by the launcher when it starts
    # one; empty: not checked).
    grpc_probe: str = ""
    # The HTTP front end that runs the Flask app: granian (Rust HTTP, the default) or gunicorn.
    server: str = "granian"
    # HTTP worker processes (they parse, validate and decode; they hold no model); 0: one per core.
    workers: int = 0
    # Threads per HTTP worker for the Flask app: under gunicorn every request holds one while its body
    # arrives and while the runtime computes (GIL released); under granian only the routes that are not on
    # the event loop's hot path use them (their bodies already read). Threads start on demand, so many cost
    # little (docs/operations.md).
    threads: int = 256
    # granian: requests one worker's event loop holds at once (reading, waiting for the runtime,
    # answering); each costs a task and its body, no thread. Beyond it requests wait in granian.
    loop_requests: int = 2048
    # Model runtimes on the CPU (on CUDA: one per device, whatever this says).
    runtimes: int = 1
    # A spare runtime process that has imported torch and waits: a runtime that dies is replaced by it, so
    # that only loading the models stands between a crash and readiness (docs/operations.md#failures).
    spare_runtime: bool = True
    # Intra-op threads of each runtime's torch; 0: a quarter of the cores per runtime, at least one (the
    # HTTP workers need the rest: a pass whose threads wait for a core is slower than one thread;
    # docs/benchmarks.md#cpu-threads).
    torch_threads: int = 0
    # Sockets of already running model runtimes (comma-separated); set by the launcher for its workers.
    runtime_sockets: str = ""
    # Rows (images) in one forward pass; bigger requests are split into batches of this size.
    max_batch_size: int = 64
    # The longest a batch waits for company once it sees concurrent traffic (it waits no longer than a
    # forward pass takes); a lone request never waits.
    max_batch_delay_ms: float = 2.0
    # Requests waiting for one model in its runtime; beyond it the service answers 429 at once.
    max_queue: int = 256
    # The longest a request may expect to wait in its model's queue, at the pace of recent forward passes;
    # one that would wait longer (or past its deadline) is answered 429 at once, while its client can still
    # retry elsewhere, rather than 504 later.
    max_queue_wait_ms: float = 1000.0
    # Deadline for one request, from arrival to answer; past it the service answers 504.
    request_timeout_s: float = 10.0
    # :explain (docs/serving.md#explanations). Integrated Gradients' steps when a request names none, and
    # the most it may ask for; examples per request (each class asked for counts as one more); explanations
    # waiting in a runtime (429 beyond); the share of a busy runtime's time they may take while predictions
    # wait; and an explanation's deadline, from arrival to answer.
    explain_steps: int = 32
    explain_max_steps: int = 128
    explain_max_examples: int = 8
    explain_max_queue: int = 16
    explain_share: float = 0.05
    explain_timeout_s: float = 30.0
    # Corrections (POST .../feedback) are stored here as an image-folder dataset; unset: feedback is off.
    # At most feedback_max_items per model (429 beyond: train on them, then move them away), and at most
    # feedback_per_minute new ones per model in any minute, over every worker (0: no rate bound). With a
    # feedback_token, only callers that present it may store corrections (the web page asks for it).
    feedback_dir: Path | None = None
    feedback_max_items: int = 10000
    feedback_per_minute: int = 60
    feedback_token: str = field(default="", repr=False)
    max_request_bytes: int = 16 * 1024 * 1024
    # JSON (a body, or the JSON header of a binary OIP request): parsed, its numbers become Python objects
    # several times the size of their text, so it has a lower limit than binary tensors and images.
    max_json_bytes: int = 3 * 1024 * 1024
    log_format: str = "text"
    log_level: str = "info"
    # SIGTERM drain: queued and in-flight requests get this long to finish.
    graceful_timeout_s: float = 30.0
    # prometheus_client's own variable; the launcher prepares it (a private folder when it is missing).
    prometheus_multiproc_dir: Path | None = None
    # The model repository API (POST /v2/repository/...) is off unless this is set; then it takes
    # `Authorization: Bearer <token>`. Kept out of repr so that logging the settings never shows it.
    management_token: str = field(default="", repr=False)
    # One line per request from the app (method, path, status, bytes, duration, request id); off by
    # default because it costs throughput and the requests metric counts every request anyway.
    access_log: bool = False
    # Origins allowed to call the API from a browser (comma-separated, or *); empty: no CORS headers.
    cors_origins: str = ""
    # How the served models change while running, as Triton's model control modes: poll (the runtime
    # watches model_dir and swaps versions in as the policy says), explicit (only the repository API's
    # load and unload change them), none (what was loaded at start stays).
    model_control: str = "poll"
    # poll: how often the runtime looks at model_dir (a few stat calls per artifact).
    poll_interval_s: float = 2.0
    # Which versions of each model are served: latest:N, all, specific:V[,V...], with per-model overrides
    # (latest:1;mnist-cnn=latest:2). latest:1 keeps memory flat as training publishes new versions.
    version_policy: str = "latest:1"

    @functools.cached_property
    def policy(self) -> VersionPolicy:
        """``version_policy``, parsed (once: the metadata and repository routes ask for it)."""
        return VersionPolicy.parse(self.version_policy)

    @property
    def explain_maps(self) -> int:
        """Attribution maps one :explain request may ask for: an explanation's rows travel in one slot of
        the arena, which holds a batch, so never more than the batch size."""
        return min(self.explain_max_examples, self.max_batch_size)

    @property
    def cors_origin_list(self) -> list[str]:
        """The allowed CORS origins."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def worker_count(self) -> int:
        """HTTP worker processes to start (``workers``, or one per core)."""
        return self.workers or _cpu_count()

    @property
    def grpc_worker_count(self) -> int:
        """gRPC front-end processes to start (``grpc_workers``, or as many as the HTTP workers on a port)."""
        return self.grpc_workers or (1 if self.grpc_bind.startswith("unix:") else self.worker_count)

    @property
    def torch_thread_count(self) -> int:
        """Intra-op threads of each runtime: ``torch_threads``, or a quarter of the cores per runtime."""
        return self.torch_threads or max(1, _cpu_count() // (4 * self.runtimes))

    @property
    def runtime_paths(self) -> list[Path]:
        """The runtime sockets the HTTP workers connect to."""
        return [Path(p.strip()) for p in self.runtime_sockets.split(",") if p.strip()]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServiceConfig:
        """Read every ``TRAINSERVE_*`` setting; raise ConfigError naming the first bad one."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = f.name.upper() if f.name.startswith("prometheus") else f"TRAINSERVE_{f.name.upper()}"
            raw = env.get(var)
            if raw is None or raw.strip() == "":
                continue
            parse, rule = _PARSERS[f.name]
            try:
                values[f.name] = parse(raw.strip())
            except (ValueError, TypeError):
                shown = "<hidden>" if f.name in _SECRETS else repr(raw)
                raise ConfigError(f"{var}={shown} is not valid: expected {rule}") from None
        return cls(**values)

    def replace(self, **changes: Any) -> ServiceConfig:
        """A copy with some fields changed (validated like the original)."""
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def __post_init__(self) -> None:
        # accept str paths from callers too
        for name in ("model_dir", "prometheus_multiproc_dir", "feedback_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        for name, (_, rule) in _PARSERS.items():
            value = getattr(self, name)
            check = _CHECKS.get(name)
            if check is not None and value is not None and not check(value):
                shown = "<hidden>" if name in _SECRETS else repr(value)
                raise ConfigError(f"{name}={shown} is not valid: expected {rule}")
        if self.explain_steps > self.explain_max_steps:
            raise ConfigError(f"explain_steps={self.explain_steps} is not valid: expected at most "
                              f"explain_max_steps ({self.explain_max_steps})")


def start_process() -> ServiceConfig | None:
    """A service process's settings from the environment, with logging configured by them; None, after
    saying why on stderr, when a setting is invalid (the entry points then exit 2)."""
    try:
        config = ServiceConfig.from_env()
    except ConfigError as exc:
        print(f"trainserve: {exc}", file=sys.stderr)
        return None
    logging.config.dictConfig(logging_config(config.log_format, config.log_level))
    return config


def _policy(text: str) -> str:
    VersionPolicy.parse(text)  # ValueError when it is not one
    return text


def _valid_policy(text: str) -> bool:
    try:
        _policy(text)
    except ValueError:
        return False
    return True


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(raw)
        return raw.lower()
    return parse


def _matching(pattern: re.Pattern[str]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not pattern.match(raw):
            raise ValueError(raw)
        return raw
    return parse


# Settings whose value never appears in a message.
_SECRETS = frozenset({"management_token", "feedback_token"})

_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "model_dir": (Path, "a folder path"),
    "device": (_matching(_DEVICE_RE), "auto, cpu, cuda or cuda:N"),
    "half": (_bool, "0 or 1"),
    "model_format": (_choice(*MODEL_FORMATS), "auto, torchscript, exported or aoti"),
    "bind": (_matching(_BIND_RE), "HOST:PORT (or unix:PATH)"),
    "grpc_bind": (_matching(_GRPC_BIND_RE), "HOST:PORT, unix:PATH or off"),
    "grpc_workers": (int, "an integer >= 0 (0: as many as the HTTP workers)"),
    "grpc_probe": (str, "HOST:PORT or unix:PATH (set by the launcher)"),
    "server": (_choice("granian", "gunicorn"), "granian or gunicorn"),
    "workers": (int, "an integer >= 0 (0: one per core)"),
    "threads": (int, "an integer >= 1"),
    "loop_requests": (int, "an integer >= 1"),
    "runtimes": (int, "an integer >= 1"),
    "spare_runtime": (_bool, "0 or 1"),
    "torch_threads": (int, "an integer >= 0 (0: a quarter of the cores per runtime)"),
    "runtime_sockets": (str, "socket paths, comma-separated"),
    "max_batch_size": (int, "an integer >= 1"),
    "max_batch_delay_ms": (float, "milliseconds >= 0"),
    "max_queue": (int, "an integer >= 1"),
    "max_queue_wait_ms": (float, "milliseconds > 0"),
    "request_timeout_s": (float, "seconds > 0"),
    "explain_steps": (int, "an integer >= 1, at most TRAINSERVE_EXPLAIN_MAX_STEPS"),
    "explain_max_steps": (int, "an integer from 1 to 1024"),
    "explain_max_examples": (int, "an integer >= 1"),
    "explain_max_queue": (int, "an integer >= 1"),
    "explain_share": (float, "a fraction > 0 and <= 1"),
    "explain_timeout_s": (float, "seconds > 0"),
    "feedback_dir": (Path, "a folder path"),
    "feedback_max_items": (int, "an integer >= 1"),
    "feedback_per_minute": (int, "an integer >= 0 (0: no rate bound)"),
    "feedback_token": (str, "a token of 16 to 256 visible ASCII characters"),
    "max_request_bytes": (int, "a byte count >= 1024"),
    "max_json_bytes": (int, "a byte count >= 1024"),
    "log_format": (_choice("text", "json"), "text or json"),
    "log_level": (_choice("debug", "info", "warning", "error", "critical"),
                  "debug, info, warning, error or critical"),
    "graceful_timeout_s": (float, "seconds >= 0"),
    "prometheus_multiproc_dir": (Path, "a folder path"),
    "management_token": (str, "a token of 16 to 256 visible ASCII characters"),
    "access_log": (_bool, "0 or 1"),
    "cors_origins": (str, "origins such as https://app.example.com, comma-separated, or *"),
    "model_control": (_choice("poll", "explicit", "none"), "poll, explicit or none"),
    "poll_interval_s": (float, "seconds >= 0.1"),
    "version_policy": (_policy, "latest:N, all or specific:V[,V...], and NAME=RULE entries, ';'-separated"),
}

_CHECKS: dict[str, Callable[[Any], bool]] = {
    "device": lambda v: bool(_DEVICE_RE.match(v)),
    "bind": lambda v: bool(_BIND_RE.match(v)),
    "grpc_bind": lambda v: bool(_GRPC_BIND_RE.match(v)),
    "grpc_workers": lambda v: v >= 0,
    "server": lambda v: v in ("granian", "gunicorn"),
    "model_format": lambda v: v in MODEL_FORMATS,
    "workers": lambda v: v >= 0,
    "threads": lambda v: v >= 1,
    "loop_requests": lambda v: v >= 1,
    "runtimes": lambda v: v >= 1,
    "torch_threads": lambda v: v >= 0,
    "max_batch_size": lambda v: v >= 1,
    "max_batch_delay_ms": lambda v: v >= 0,
    "max_queue": lambda v: v >= 1,
    "max_queue_wait_ms": lambda v: v > 0,
    "request_timeout_s": lambda v: v > 0,
    "explain_steps": lambda v: v >= 1,
    "explain_max_steps": lambda v: 1 <= v <= 1024,
    "explain_max_examples": lambda v: v >= 1,
    "explain_max_queue": lambda v: v >= 1,
    "explain_share": lambda v: 0 < v <= 1,
    "explain_timeout_s": lambda v: v > 0,
    "feedback_max_items": lambda v: v >= 1,
    "feedback_per_minute": lambda v: v >= 0,
    "feedback_token": lambda v: v == "" or bool(_TOKEN_RE.match(v)),
    "max_request_bytes": lambda v: v >= 1024,
    "max_json_bytes": lambda v: v >= 1024,
    "model_control": lambda v: v in ("poll", "explicit", "none"),
    "poll_interval_s": lambda v: v >= 0.1,
    "version_policy": _valid_policy,
    "log_format": lambda v: v in ("text", "json"),
    "log_level": lambda v: v in ("debug", "info", "warning", "error", "critical"),
    "graceful_timeout_s": lambda v: v >= 0,
    "management_token": lambda v: v == "" or bool(_TOKEN_RE.match(v)),
    "cors_origins": lambda v: all(o == "*" or _ORIGIN_RE.match(o) for o in
                                  (p.strip() for p in v.split(",")) if o),
}
