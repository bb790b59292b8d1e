"""``python -m edit_core.distill`` / ``torchrun -m edit_core.distill``: see ``edit_core.distill.cli``."""

import sys

from .cli import main

sys.exit(main())
