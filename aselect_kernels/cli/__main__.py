"""``python -m aselect_kernels.cli``: the same as ``aselect``."""

import sys

from .entry import main

sys.exit(main())
