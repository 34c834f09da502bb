"""Devices and DistributedDataParallel: which process this is, and where its tensors live.

``torchrun --nproc_per_node=N`` tells each process its rank through the environment; the CLI reads that
once (:func:`world_from_env`) and passes a :class:`World` down, like every other setting.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from training.config import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    local_rank: int = 0  # rank on this machine: picks the GPU
    size: int = 1

    @property
    def distributed(self) -> bool:
        """Whether more than one process trains."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 evaluates, reports and writes the artifact."""
        return self.rank == 0


SINGLE = World()


def world_from_env(env: Mapping[str, str]) -> World:
    """The World torchrun describes in ``env`` (RANK, LOCAL_RANK, WORLD_SIZE); one process otherwise."""
    try:
        return World(rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)),
                     size=int(env.get("WORLD_SIZE", 1)))
    except ValueError as exc:
        raise ConfigError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers: {exc}") from None


def resolve_device(spec: str, world: World = SINGLE) -> torch.device:
    """auto | cpu | cuda | cuda:N as a device; under torchrun, ``cuda`` and ``auto`` mean this rank's GPU."""
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available here (torch {torch.__version__}, "
                          f"cuda {torch.version.cuda}); use --device cpu or auto")
    device = torch.device(f"cuda:{world.local_rank}") if spec in ("auto", "cuda") else torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {spec}: there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


@contextmanager
def process_group(world: World, device: torch.device, timeout_s: float = 1800) -> Iterator[None]:
    """Join the process group for the duration (nccl on CUDA, gloo on CPU); nothing for one process."""
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.size,
                            timeout=dt.timedelta(seconds=timeout_s))
    try:
        yield
        # Tearing the group down is collective: a rank that leaves while rank 0 still evaluates and exports
        # can abort in gloo's teardown ("terminate called without an active exception", exit -6) and fail
        # a run that succeeded. On success every rank waits here for the others; on an error torchrun
        # stops the ranks still waiting.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Wait for every process (for example while rank 0 downloads or writes)."""
    if world.distributed:
        dist.barrier()


def sum_across(world: World, *values: float) -> list[float]:
    """Each value summed over all processes (every process gets the sums)."""
    if not world.distributed:
        return list(values)
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    totals = torch.tensor(values, dtype=torch.float64, device=backend_device)
    dist.all_reduce(totals)
    return totals.tolist()
