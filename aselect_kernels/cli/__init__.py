"""The ``aselect`` command line: ``demo`` (the main job), ``select``, ``probe``, ``validate``, ``train``, ``taps``.

:mod:`.parser` declares every option, :mod:`.commands` runs them, :mod:`.checks` holds what they check first,
:mod:`.entry` is ``main``.

Every error ends in one line ``aselect: error: ...`` and exit status 2, found before the model runs wherever it can
be (arguments, input files, the output folder, labels); Ctrl-C ends with one line and status 130.  ``--debug`` (or
``ASELECT_DEBUG=1``) shows the traceback instead.  Arguments are checked before torch is imported, so a rejected
one costs no import time.  Each forward prints its plan first (:mod:`~aselect_kernels.plan`: ``--dry-run`` stops
there, and more than its ``SAMPLES_LIMIT`` samples per draw need ``--yes``), and every command's files appear all
together or not at all (:mod:`~aselect_kernels.outputs`).
"""

from __future__ import annotations

from .checks import CliError, check_out
from .entry import error_line, main
from .parser import DEBUG_ENV, build_parser

__all__ = ["DEBUG_ENV", "CliError", "build_parser", "check_out", "error_line", "main"]
