"""`python -m ssa` = the `ssa` command."""

import sys

from ssa.cli import main

sys.exit(main())
