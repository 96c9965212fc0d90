"""`python -m exporter.simulator`: the same as `cts-import-exporter simulate`."""

import sys

from exporter.simulator.cli import main

sys.exit(main(sys.argv[1:]))
