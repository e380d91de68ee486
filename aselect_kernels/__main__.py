"""``python -m aselect_kernels`` runs the ``aselect`` command line."""

import sys

from .cli import main

sys.exit(main())
