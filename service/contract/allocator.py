"""How the C allocator treats the memory torch frees between forward passes (glibc only; stdlib only).

glibc's malloc hands blocks above its mmap threshold straight back to the kernel when they are freed. A
forward pass frees its activations and the next one allocates them again, so under glibc's defaults the
kernel maps and zeroes fresh pages on every pass, until glibc raises the threshold by itself, late or
never. ``keep_freed_memory`` raises both thresholds at start-up, as the PyTorch CPU performance guides do
with jemalloc or tcmalloc, so that the next pass reuses the freed blocks from the first request on.

The cost is memory a process has used once and keeps: its peak heap, which for a server is the next
batch's working set anyway. Every model runtime calls it once, at start-up, and so does the training
CLI. What it saves, measured: docs/benchmarks.md, "The C allocator".

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
