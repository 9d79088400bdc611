"""``python -m DistillSegWeb``: see :mod:`DistillSegWeb.cli`."""

import sys

from .cli import main

sys.exit(main())
