"""``python -m ssdstudy.cli``: the same as the ``ssdstudy`` command."""

import sys

from ssdstudy.cli import main

sys.exit(main())
