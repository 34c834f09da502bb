"""``python -m service``: the model runtimes and the HTTP front end, supervised (service/server/launch.py)."""

import sys

from service.server.launch import main

sys.exit(main())
