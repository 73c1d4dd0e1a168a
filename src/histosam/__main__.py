"""``python -m histosam …``: the same command line as the ``histosam`` script."""

import sys

from histosam.cli.main import main

sys.exit(main())
