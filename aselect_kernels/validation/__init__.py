"""The validation harness: label-free selection read against an exhaustive grid of linear probes.

Start at :mod:`.run` (:func:`~.run.validate`); the probes are in :mod:`.probe` (fitted together by
:mod:`.logistic`), the data in :mod:`.datasets`.
"""
