"""The image's HEALTHCHECK: exit 0 when the service answers /readyz on its own port (stdlib only).

Ready, not merely alive: the models are loaded and warmed. The port follows TRAINSERVE_BIND.
"""

import os
import sys
import urllib.request


def main() -> int:
    """Ask /readyz on the bound port; 0 when it answers 200."""
    port = os.environ.get("TRAINSERVE_BIND", "0.0.0.0:8000").rsplit(":", 1)[1]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:  # URLError and HTTPError are OSErrors
        print(f"not ready: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
