"""The selection result: the score table [timestep x tap x scorer], the choices, and its views."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .scorers import Moments, pick


@dataclass
class SelectionResult:
    """Scores of every (timestep, tap, scorer) cell, aggregated over images.

    Attributes:
        timesteps, taps, scorers: the table's axes; ``directions`` maps scorer -> ``"max"``/``"min"``.
        moments: :class:`~aselect_kernels.scorers.Moments` with arrays ``[T, P, S]`` (mean, std, count, flagged).
        primary: the scorer whose choice :attr:`best` and :attr:`best_t_per_tap` report.
        meta: run facts (model, noise family, statistics config, images, wall time, chunks, ...).
    """

    timesteps: list[int]
    taps: list[str]
    scorers: list[str]
    directions: dict[str, str]
    moments: Moments
    primary: str
    meta: dict = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        return self.moments.mean

    @property
    def std(self) -> np.ndarray:
        return self.moments.std

    @property
    def count(self) -> np.ndarray:
        return self.moments.count

    @property
    def flagged(self) -> np.ndarray:
        return self.moments.flagged

    def _s(self, scorer: str | None) -> int:
        name = scorer or self.primary
        if name not in self.scorers:
            raise ValueError(f"scorer {name!r} not in this result (have {self.scorers})")
        return self.scorers.index(name)

    def best_t_per_tap(self, scorer: str | None = None, direction: str | None = None) -> dict[str, int]:
        """Best timestep of each tap under ``scorer`` (default: the primary) and ``direction`` (default: its own)."""
        s = self._s(scorer)
        d = direction or self.directions[self.scorers[s]]
        return {tap: self.timesteps[pick(self.mean[:, p, s], d)] for p, tap in enumerate(self.taps)}

    def best(self, scorer: str | None = None, direction: str | None = None) -> tuple[int, str]:
        """The best (t, tap) over the whole table for one scorer."""
        s = self._s(scorer)
        d = direction or self.directions[self.scorers[s]]
        flat = pick(self.mean[:, :, s], d)
        ti, p = divmod(flat, len(self.taps))
        return self.timesteps[ti], self.taps[p]

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def table(self, scorer: str | None = None, max_taps: int = 8, line_width: int = 130) -> str:
        """A readable table of mean +- std over images for one scorer.

        Taps beyond ``max_taps`` are elided (the table keeps those with the best scores and says so); columns wrap
        into blocks so that no line is wider than ``line_width``; a legend explains the marks and abbreviations.
        """
        s = self._s(scorer)
        name = self.scorers[s]
        direction = self.directions[name]
        per_tap = self.best_t_per_tap(name)
        shown = self.taps if len(self.taps) <= max_taps else self._top_taps(s, max_taps)
        labels = [_short(tap) for tap in shown]
        keyed = max(map(len, labels)) > _MAX_LABEL
        if keyed:  # long module paths: number the columns and list the names below
            labels = [f"[{i + 1}]" for i in range(len(shown))]
        width = max(_CELL, *map(len, labels))
        per_block = max(1, (line_width - 7) // (width + 1))
        lines = [f"scorer {name} (direction {direction}), mean +- std over images"]
        for lo in range(0, len(shown), per_block):
            cols = range(lo, min(lo + per_block, len(shown)))
            if lo:
                lines.append("")
            lines.append(f"{'t':>6} " + " ".join(f"{labels[c]:>{width}}" for c in cols))
            for ti, t in enumerate(self.timesteps):
                cells = []
                for c in cols:
                    p = self.taps.index(shown[c])
                    mark = "*" if per_tap[shown[c]] == t else " "
                    cells.append(f"{self.mean[ti, p, s]:.4f}+-{self.std[ti, p, s]:.3f}{mark}".rjust(width))
                lines.append(f"{t:>6} " + " ".join(cells))
        lines.append(f"* marks each tap's best t ({direction} {name})")
        if len(shown) < len(self.taps):
            best_word = "highest" if direction == "max" else "lowest"
            lines.append(f"showing {len(shown)} of {_plural(len(self.taps), 'tap')}: those with the {best_word} best "
                         f"{name} (all of them are in the saved result)")
        if keyed:
            lines += [f"[{i + 1}] {tap}" for i, tap in enumerate(shown)]
        abbreviations = _abbreviations(shown) if not keyed else []
        if abbreviations:
            lines.append("; ".join(abbreviations))
        t_best, tap_best = self.best(name)
        lines.append(f"best (t, tap): ({t_best}, {tap_best})")
        if self.n_flagged:
            lines.append(f"WARNING: {_plural(self.n_flagged, 'non-finite sample score')} flagged and excluded")
        return "\n".join(lines)

    def _top_taps(self, s: int, k: int) -> list[str]:
        d = self.directions[self.scorers[s]]
        best_per_tap = np.nanmax(self.mean[:, :, s], 0) if d == "max" else -np.nanmin(self.mean[:, :, s], 0)
        order = np.argsort(-best_per_tap, kind="stable")[:k]
        return [self.taps[i] for i in sorted(order)]

    def to_dict(self) -> dict:
        m = self.moments
        return {
            "timesteps": self.timesteps, "taps": self.taps, "scorers": self.scorers,
            "directions": self.directions, "primary": self.primary,
            "best": dict(zip(("t", "tap"), self.best(), strict=True)), "best_t_per_tap": self.best_t_per_tap(),
            "count": m.count.tolist(), "total": m.total.tolist(), "total_sq": m.total_sq.tolist(),
            "flagged": m.flagged.tolist(), "mean": _nan_to_none(self.mean), "std": _nan_to_none(self.std),
            "meta": self.meta,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON (written to ``path`` too when given); :meth:`from_json` reads it back exactly."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> SelectionResult:
        """Read a result from a JSON string or a file path."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        d = json.loads(text)
        moments = Moments(*(np.asarray(d[k], dtype=np.float64 if "total" in k else np.int64)
                            for k in ("count", "total", "total_sq", "flagged")))
        return cls(d["timesteps"], d["taps"], d["scorers"], d["directions"], moments, d["primary"], d.get("meta", {}))

    def plot(self, path: str | Path, scorer: str | None = None) -> Path:
        """A PNG of score against t, one labelled line per tap (std band over images); the chosen (t, tap) is
        marked.  Taps of several kinds (``--taps all``) get one panel per kind, each line labelled by its block."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = self._figure(plt, scorer)
        out = Path(path)
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)
        return out

    def _figure(self, plt, scorer: str | None = None):  # noqa: ANN001, ANN202 - matplotlib objects
        """The figure :meth:`plot` saves: one axes per tap kind, every line labelled with its tap."""
        s = self._s(scorer)
        name = self.scorers[s]
        t_best, tap_best = self.best(name)
        panels = _tap_kinds(self.taps)
        if len(panels) > _MAX_PANELS:
            panels = {"": list(self.taps)}
        ncols = min(2, len(panels))
        nrows = -(-len(panels) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(7.5 * ncols, 4.2 * nrows), squeeze=False)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        styles = ("-", "--", ":", "-.")
        for ax, (kind, members) in zip(axes.flat, panels.items(), strict=False):
            for i, tap in enumerate(members):
                p = self.taps.index(tap)
                mu, sd = self.mean[:, p, s], self.std[:, p, s]
                color, style = plt.get_cmap("tab10")(i % 10), styles[(i // 10) % len(styles)]
                ax.plot(self.timesteps, mu, style, color=color, lw=1.2, label=_short(tap))
                ax.fill_between(self.timesteps, mu - sd, mu + sd, color=color, alpha=0.08)
            if tap_best in members:
                ax.plot([t_best], [self.mean[self.timesteps.index(t_best), self.taps.index(tap_best), s]], "r*",
                        ms=14, label=f"chosen ({t_best}, {_short(tap_best)})")
            ax.set_xlabel("t (noise from clean)")
            ax.set_ylabel(f"{name} ({self.directions[name]} is best)")
            ax.set_title(kind or f"{_plural(len(members), 'tap')}", fontsize=9)
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(members) // 16,
                      borderaxespad=0.0)
        fig.suptitle(f"A-SelecT scores: {name}, {_plural(len(self.taps), 'tap')}; chosen (t, tap) = "
                     f"({t_best}, {tap_best})", fontsize=10)
        fig.tight_layout()
        return fig


#: Width of one table cell (``0.1234+-0.012*``) and the longest tap label used as a column heading.
_CELL = 14
_MAX_LABEL = 28
#: More tap kinds than this are plotted in one panel.
_MAX_PANELS = 6
_ABBREVIATION = {"transformer_blocks": "tb", "blocks": "b"}
_BLOCK_INDEX = re.compile(r"(?<![A-Za-z0-9_])(transformer_blocks|blocks)\.(\d+)(?=$|[.@\[])")


def _plural(n: int, noun: str) -> str:
    """``1 tap``, ``2 taps`` (the last word of ``noun`` takes the plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _abbreviations(taps: list[str]) -> list[str]:
    """The legend of the block abbreviations :func:`_short` used for these taps."""
    found = {m.group(1) for tap in taps for m in _BLOCK_INDEX.finditer(tap)}
    return [f"{_ABBREVIATION[k]}N = {k}.N" for k in ("transformer_blocks", "blocks") if k in found]


def _tap_kinds(taps: list[str]) -> dict[str, list[str]]:
    """Taps grouped by kind: the tap name with its block index replaced by ``N`` (``tbN.ff.net.0``)."""
    kinds: dict[str, list[str]] = {}
    for tap in taps:
        kinds.setdefault(_BLOCK_INDEX.sub(lambda m: _ABBREVIATION[m.group(1)] + "N", tap, count=1), []).append(tap)
    return kinds


def _short(tap: str) -> str:
    """A tap name shortened for tables: ``transformer_blocks.3.attn1.to_q`` -> ``tb3.attn1.to_q``,
    ``blocks.3.mlp`` -> ``b3.mlp``."""
    return _BLOCK_INDEX.sub(lambda m: _ABBREVIATION[m.group(1)] + m.group(2), tap)


def _nan_to_none(a: np.ndarray) -> list:
    return np.where(np.isfinite(a), a, None).tolist()
