"""The validation harness: label-free selection read against an exhaustive grid of linear probes.

Start at :mod:`.run` (:func:`~.run.validate`).  The probe grids are in :mod:`.grids` (one probe per cell,
:mod:`.probe`, fitted together by :mod:`.logistic`); :mod:`.compare` reads a selection against them beside the
trivial rules of :mod:`.rules`; the data come from :mod:`.datasets` and :mod:`.splits`; :mod:`.report` prints and
plots.  :mod:`.label_free` and :mod:`.confirm` are the studies behind docs/VALIDATION.md.
"""
