"""``python -m edit_core``: see ``edit_core.cli``."""

import sys

from .cli import main

sys.exit(main())
