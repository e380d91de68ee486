"""The trivial rules that selection is read beside: they choose a timestep without looking at features.

* ``smallest_t``: the smallest t of the grid;
* ``t100``: the grid's t nearest 100 (DDAE's kind of default); reports name the t it took when 100 is not in the
  grid (``t100 (t=50: nearest grid t)``);
* ``random``: a uniformly random t (its expected accuracy, exact, not sampled).

For the joint choice a trivial rule also needs a tap without looking at features: it takes the *middle tap* of
the tap set (the tap list's middle entry, e.g. the middle block); ``random`` takes a uniformly random (t, tap).
"""

from __future__ import annotations

import numpy as np

#: The rules, in report order.
TRIVIAL_RULES = ("smallest_t", "t100", "random")

def rule_label(rule: str, row: dict) -> str:
    """A trivial rule's name as reports print it: ``t100`` says which grid t it took when 100 is not in the grid."""
    if rule == "t100" and row.get("t") not in (None, 100):
        return f"t100 (t={row['t']}: nearest grid t)"
    return rule

def rule_t(rule: str, timesteps: list[int]) -> int | None:
    """The index of the grid t that ``rule`` takes; ``None`` for ``random`` (read as an expectation)."""
    if rule == "smallest_t":
        return int(np.argmin(timesteps))
    if rule == "t100":
        return int(np.argmin(np.abs(np.asarray(timesteps) - 100)))
    return None  # random: expectation
