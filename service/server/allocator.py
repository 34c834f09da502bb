"""How the C allocator treats the memory torch frees between forward passes (glibc only; stdlib only).

glibc's malloc hands blocks above its mmap threshold (128 KiB at first) straight back to the kernel when
they are freed, and trims the heap's free top once it passes 128 KiB. A forward pass frees its
activations and the next one allocates them again, so under those defaults the kernel maps and zeroes
fresh pages every pass: 85-480 page faults per batch-64 pass of the shipped model in a loop of 10,000
passes, 20,000-78,000 per second in each freshly started worker under load. glibc raises the mmap
threshold by itself only when it frees a mapped block larger than the threshold, which in a worker took
from 30 s to over a minute of load, or never in the loop (README, Benchmarks). ``keep_freed_memory``
raises both thresholds at start-up, as the PyTorch CPU performance guides do with jemalloc or tcmalloc,
so that freed blocks stay in the process and the next pass reuses them from the first request on.

The cost is memory a process has used once and keeps: its peak heap, which for a server is the next
batch's working set anyway. Every model runtime calls it once, at start-up, and so does
the training CLI: an epoch of the pytorch/examples net took 32.4-33.8 s against 35.8-37.1 s without it;
the default net's training, where glibc adapts early, the same time either way.

Any malloc setting in the environment (``GLIBC_TUNABLES=glibc.malloc.perturb=0`` is glibc's defaults)
leaves the thresholds alone, which is also how to measure without this.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems; blocks above it are still mapped and unmapped each time.
MMAP_THRESHOLD = 32 << 20
# Twice the mmap threshold: the ratio glibc keeps between the two when it adjusts them itself.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
# Settings through which an operator tunes glibc's malloc; when any is present, theirs is the choice.
_ENVIRONMENT = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks under 32 MiB for reuse; False where it is not glibc or the environment
    already tunes malloc (``MALLOC_*_`` variables, ``glibc.malloc`` in ``GLIBC_TUNABLES``)."""
    if platform.libc_ver()[0] != "glibc":
        log.debug("not glibc: the C allocator is left as it is")
        return False
    if any(name in os.environ for name in _ENVIRONMENT) or "glibc.malloc." in os.environ.get(
            "GLIBC_TUNABLES", ""):
        log.info("malloc is tuned by the environment: its thresholds are left as they are")
        return False
    mallopt = ctypes.CDLL(None).mallopt
    done = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not done:
        log.warning("mallopt refused the thresholds: freed memory goes back to the kernel after every pass")
    return done
