"""``python -m zoo_core`` runs the ``zoo`` command (torchrun workers start this way)."""

import sys

from .cli import main

sys.exit(main())
