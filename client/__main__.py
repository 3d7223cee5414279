"""`python -m client ...` = `ssa annotate ...`: the batch runner (see `ssa annotate --help`)."""

import sys

from ssa.cli import main

sys.exit(main(["annotate", *sys.argv[1:]]))
