"""``python -m gateway``: the same command line as ``room-gateway``."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
