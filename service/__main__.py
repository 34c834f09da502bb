"""``python -m service``: the model runtimes and the HTTP front end, supervised (service/launcher/)."""

import sys

from service.launcher.launch import main

sys.exit(main())
