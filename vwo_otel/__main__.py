"""``python -m vwo_otel``: the ``vwo-otel`` command line (``vwo_otel.cli``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
