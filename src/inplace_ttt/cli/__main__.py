"""`python -m inplace_ttt.cli ...` (what torchrun launches: ``torchrun -m inplace_ttt.cli train x.yaml``)."""

import sys

from . import main

sys.exit(main())
