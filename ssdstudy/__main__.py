"""``python -m ssdstudy``: the same as the ``ssdstudy`` command (and what
``torchrun --nproc-per-node N -m ssdstudy train RUN.yaml`` starts in each process)."""

import sys

from ssdstudy.cli import main

sys.exit(main())
