"""How much a gzip bomb makes a worker allocate before it is refused (service/web/encoding.py).

    PYTHONPATH=. python scripts/decompression_bomb.py [--decoded-mib 1024] [--limit-mib 16]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
import zlib

from service.errors import PayloadTooLarge
from service.web.encoding import inflate


def main() -> None:
    """Build the bomb, inflate it under tracemalloc, print its sizes, the peak and the time."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoded-mib", type=int, default=1024, help="decoded size (default: 1024)")
    parser.add_argument("--limit-mib", type=int, default=16, help="the body limit (default: 16)")
    args = parser.parse_args()
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 20)
    bomb = b"".join(packer.compress(block) for _ in range(args.decoded_mib)) + packer.flush()
    tracemalloc.start()
    started = time.perf_counter()
    try:
        inflate(bomb, 16 + zlib.MAX_WBITS, args.limit_mib << 20)
        outcome = "accepted"
    except PayloadTooLarge:
        outcome = "refused (413)"
    took = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    print(f"bomb {len(bomb)} bytes -> {args.decoded_mib} MiB, limit {args.limit_mib} MiB: {outcome}, "
          f"peak allocation {peak / 2**20:.1f} MiB, {took * 1000:.0f} ms")


if __name__ == "__main__":
    main()
