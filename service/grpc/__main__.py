"""``python -m service.grpc``: one gRPC front-end process (service/grpc/server.py)."""

import sys

from service.grpc.server import main

sys.exit(main())
