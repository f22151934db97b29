"""`python -m rayrm JOB ...`: the `rayrm` command where the console script is not on PATH."""

import sys

from rayrm.cli import main

sys.exit(main())
