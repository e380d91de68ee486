"""Comparative words computed from the figures: whether one side took less, more or the same, and by what factor."""

from __future__ import annotations

import math


def _factor(ratio: float) -> str:
    """A ratio > 1 as text: one decimal, two when one would show 1.0."""
    text = f"{ratio:.1f}"
    return f"{ratio:.2f}" if text == "1.0" else text


def compared(ours: float, theirs: float, noun: str, fewer: str = "less", more: str = "more",
             mark: str = "x") -> str:
    """How ``ours`` compares with ``theirs`` in ``noun``: ``"3.0x fewer forward samples"`` when ours is a third of
    theirs, ``"1.5x more forward samples"`` when it is half as much again, ``"the same forward samples"`` when
    equal.  ``fewer``/``more`` are the words for each direction and ``mark`` the factor's sign (``x`` or ``×``); a
    figure that is not finite, negative or zero gives the two figures instead of a factor."""
    if not (math.isfinite(ours) and math.isfinite(theirs)) or ours < 0 or theirs < 0:
        return f"{noun}: {ours:g} vs {theirs:g}"
    if ours == theirs:
        return f"the same {noun}"
    if ours == 0 or theirs == 0:
        return f"{noun}: {ours:g} vs {theirs:g}"
    if ours < theirs:
        ratio, word = theirs / ours, fewer
    else:
        ratio, word = ours / theirs, more
    factor = _factor(ratio)
    if factor == "1.00":
        return f"about the same {noun} (slightly {word})"
    return f"{factor}{mark} {word} {noun}"
