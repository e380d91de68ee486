"""The selection result: the score table [timestep x tap x scorer], the choices, and its views."""

from __future__ import annotations

import json
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

    def table(self, scorer: str | None = None, max_taps: int = 8) -> str:
        """A readable table of mean +- std over images for one scorer (taps beyond ``max_taps`` are elided)."""
        s = self._s(scorer)
        name = self.scorers[s]
        per_tap = self.best_t_per_tap(name)
        shown = self.taps if len(self.taps) <= max_taps else self._top_taps(s, max_taps)
        width = max(14, *(len(_short(t)) + 2 for t in shown))
        lines = [f"scorer {name} (direction {self.directions[name]}), mean +- std over images"]
        lines.append(f"{'t':>6} " + " ".join(f"{_short(tap):>{width}}" for tap in shown))
        for ti, t in enumerate(self.timesteps):
            cells = []
            for tap in shown:
                p = self.taps.index(tap)
                mark = "*" if per_tap[tap] == t else " "
                cells.append(f"{self.mean[ti, p, s]:.4f}+-{self.std[ti, p, s]:.3f}{mark}".rjust(width))
            lines.append(f"{t:>6} " + " ".join(cells))
        if len(shown) < len(self.taps):
            lines.append(f"({len(self.taps) - len(shown)} more taps not shown; * marks each tap's best t; "
                         "tbN = transformer_blocks.N)")
        t_best, tap_best = self.best(name)
        lines.append(f"best (t, tap): ({t_best}, {tap_best})")
        if self.n_flagged:
            lines.append(f"WARNING: {self.n_flagged} non-finite sample scores were flagged and excluded")
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
        """A PNG of score against t, one line per tap (std band over images); the chosen (t, tap) is marked."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = self._s(scorer)
        name = self.scorers[s]
        fig, ax = plt.subplots(figsize=(9, 5.5))
        cmap = plt.get_cmap("viridis", max(len(self.taps), 2))
        for p, tap in enumerate(self.taps):
            mu, sd = self.mean[:, p, s], self.std[:, p, s]
            ax.plot(self.timesteps, mu, color=cmap(p), lw=1.2, label=tap if len(self.taps) <= 12 else None)
            ax.fill_between(self.timesteps, mu - sd, mu + sd, color=cmap(p), alpha=0.08)
        t_best, tap_best = self.best(name)
        p = self.taps.index(tap_best)
        ax.plot([t_best], [self.mean[self.timesteps.index(t_best), p, s]], "r*", ms=14,
                label=f"best ({t_best}, {tap_best})")
        ax.set_xlabel("t (noise from clean)")
        ax.set_ylabel(f"{name} ({self.directions[name]} is best)")
        ax.set_title(f"A-SelecT scores: {name}, {len(self.taps)} taps")
        ax.legend(fontsize=7, loc="best")
        if len(self.taps) > 12:
            sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, len(self.taps) - 1))
            fig.colorbar(sm, ax=ax, label="tap index (order of the table)")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return out


def _short(tap: str) -> str:
    """A tap name shortened for tables: ``transformer_blocks.3.attn1.to_q`` -> ``tb3.attn1.to_q``."""
    return tap.replace("transformer_blocks.", "tb").replace("blocks.", "b")


def _nan_to_none(a: np.ndarray) -> list:
    return np.where(np.isfinite(a), a, None).tolist()
