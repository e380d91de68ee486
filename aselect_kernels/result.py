"""The selection result: the score table [timestep x tap x scorer], the choices, and its views."""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import confidence
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

    def __post_init__(self) -> None:
        if len(set(self.timesteps)) != len(self.timesteps):
            raise ValueError(f"a result's timesteps must be unique, got {self.timesteps}")

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

    def dead_cells(self, scorer: str | None = None) -> list[tuple[int, str]]:
        """The ``(t, tap)`` cells with no finite score under ``scorer`` (default: the primary): every sample was
        flagged (NaN/Inf features, zero energy).  They are shown as ``dead`` and never selected."""
        s = self._s(scorer)
        return [(t, tap) for ti, t in enumerate(self.timesteps) for p, tap in enumerate(self.taps)
                if self.count[ti, p, s] == 0]

    def best_t_per_tap(self, scorer: str | None = None, direction: str | None = None) -> dict[str, int | None]:
        """Best timestep of each tap under ``scorer`` (default: the primary) and ``direction`` (default: its own);
        ``None`` for a tap whose cells are all dead (:meth:`dead_cells`)."""
        s = self._s(scorer)
        d = direction or self.directions[self.scorers[s]]
        out: dict[str, int | None] = {}
        for p, tap in enumerate(self.taps):
            column = self.mean[:, p, s]
            out[tap] = self.timesteps[pick(column, d)] if np.isfinite(column).any() else None
        return out

    def best(self, scorer: str | None = None, direction: str | None = None) -> tuple[int, str]:
        """The best (t, tap) over the live cells of the whole table for one scorer; raises ``ValueError`` when every
        cell is dead."""
        s = self._s(scorer)
        d = direction or self.directions[self.scorers[s]]
        if not np.isfinite(self.mean[:, :, s]).any():
            raise ValueError(f"no (t, tap) to select under {self.scorers[s]!r}: every cell is dead (all "
                             f"{int(self.flagged[:, :, s].sum())} sample scores were flagged as NaN or Inf)")
        flat = pick(self.mean[:, :, s], d)
        ti, p = divmod(flat, len(self.taps))
        return self.timesteps[ti], self.taps[p]

    def _best_or_none(self, scorer: str | None = None) -> tuple[int, str] | None:
        s = self._s(scorer)
        return self.best(scorer) if np.isfinite(self.mean[:, :, s]).any() else None

    @property
    def n_flagged(self) -> int:
        return int(self.flagged.sum())

    def table(self, scorer: str | None = None, max_taps: int = 8, line_width: int = 130) -> str:
        """A readable table of mean +- std over images for one scorer.

        Taps beyond ``max_taps`` are elided (the table keeps those with the best scores and says so); columns wrap
        into blocks so that no line is wider than ``line_width``; a legend explains the marks and abbreviations.
        Dead cells (every sample flagged) read ``dead`` and are listed below the table.
        """
        s = self._s(scorer)
        name = self.scorers[s]
        direction = self.directions[name]
        per_tap = self.best_t_per_tap(name)
        shown = self.taps if len(self.taps) <= max_taps else self._top_taps(s, max_taps)
        labels = [short_tap(tap) for tap in shown]
        keyed = max(map(len, labels)) > _MAX_LABEL
        if keyed:  # long module paths: number the columns and list the names below
            labels = [f"[{i + 1}]" for i in range(len(shown))]
        width = max(_CELL, *map(len, labels))
        per_block = max(1, (line_width - 7) // (width + 1))
        across = name in self.meta.get("pair_scorers", ())
        what = "one value per cell, across images and two noise draws" if across else "mean +- std over images"
        lines = [f"scorer {name} (direction {direction}), {what}"]
        paper = self.meta.get("paper_timesteps")
        paper_head = f"{'paper t':>7} " if paper else ""

        def paper_cell(ti: int) -> str:
            return f"{paper[ti]:>7} " if paper else ""

        for lo in range(0, len(shown), per_block):
            cols = range(lo, min(lo + per_block, len(shown)))
            if lo:
                lines.append("")
            lines.append(f"{'t':>6} {paper_head}" + " ".join(f"{labels[c]:>{width}}" for c in cols))
            for ti, t in enumerate(self.timesteps):
                cells = []
                for c in cols:
                    p = self.taps.index(shown[c])
                    mark = "*" if per_tap[shown[c]] == t else " "
                    text = ("dead" if self.count[ti, p, s] == 0 else f"{self.mean[ti, p, s]:.4f}" if across
                            else f"{self.mean[ti, p, s]:.4f}+-{self.std[ti, p, s]:.3f}")
                    cells.append(f"{text}{mark}".rjust(width))
                lines.append(f"{t:>6} {paper_cell(ti)}" + " ".join(cells))
        lines.append(f"* marks each tap's best t ({direction} {name})")
        if len(shown) < len(self.taps):
            best_word = "highest" if direction == "max" else "lowest"
            lines.append(f"showing {len(shown)} of {plural(len(self.taps), 'tap')}: those with the {best_word} best "
                         f"{name} (all of them are in the saved result)")
        if keyed:
            lines += [f"[{i + 1}] {tap}" for i, tap in enumerate(shown)]
        abbreviations = _abbreviations(shown) if not keyed else []
        if abbreviations:
            lines.append("; ".join(abbreviations))
        best = self._best_or_none(name)
        lines.append(f"best (t, tap): ({best[0]}, {best[1]})" if best else "best (t, tap): none, every cell is dead")
        if paper and best:
            lines.append(f"paper t = {self.meta['recipe']['paper_timestep']}: the chosen t is paper t = "
                         f"{paper[self.timesteps.index(best[0])]}")
        labels = self.meta.get("labels")
        if labels and labels.get("criterion") == name:
            from .fewlabel import summary

            lines.append(summary(labels))
        for note in confidence.edge_lines(self, name) + confidence.tie_lines(self, name):
            lines += textwrap.wrap(f"NOTE: {note}", line_width, subsequent_indent="  ", break_on_hyphens=False)
        if self.n_flagged:
            lines.append(f"WARNING: {plural(self.n_flagged, 'non-finite sample score')} flagged and excluded")
        dead = self.dead_cells(name)
        if dead:
            lines.append(f"WARNING: {len(dead)} of {plural(len(self.timesteps) * len(self.taps), 'cell')} are dead "
                         f"(every sample flagged) under {name}: {_describe_cells(dead, self.timesteps)}")
        return "\n".join(lines)

    def _top_taps(self, s: int, k: int) -> list[str]:
        d = self.directions[self.scorers[s]]
        signed = self.mean[:, :, s] if d == "max" else -self.mean[:, :, s]
        best_per_tap = np.where(np.isfinite(signed), signed, -np.inf).max(0)  # a dead tap ranks last
        order = np.argsort(-best_per_tap, kind="stable")[:k]
        return [self.taps[i] for i in sorted(order)]

    def to_dict(self) -> dict:
        m = self.moments
        return {
            "timesteps": self.timesteps, "taps": self.taps, "scorers": self.scorers,
            "directions": self.directions, "primary": self.primary,
            "best": _cell_dict(self._best_or_none()), "best_t_per_tap": self.best_t_per_tap(),
            "edges": confidence.edges(self),
            "dead_cells": {name: [list(c) for c in self.dead_cells(name)] for name in self.scorers
                           if self.dead_cells(name)},
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
    def from_json(cls, source: str | os.PathLike) -> SelectionResult:
        """Read a result from JSON text or a file.

        The rule: an ``os.PathLike`` (``pathlib.Path``) is always a file; a ``str`` is JSON text when its first
        non-blank character is ``{``, else a file path (:meth:`load` reads a path whatever its name, e.g.
        ``{run}.json``); a parsed ``dict`` goes to :meth:`from_dict`.  Anything else is a ``TypeError``.  A
        malformed result raises ``ValueError`` naming the file and the problem (:meth:`from_dict`)."""
        if isinstance(source, os.PathLike):
            return cls.load(source)
        if not isinstance(source, str):
            hint = " (a parsed dict: SelectionResult.from_dict)" if isinstance(source, dict) else ""
            raise TypeError(f"source must be JSON text (a str starting with '{{') or a file path (str or "
                            f"pathlib.Path), got {type(source).__name__}{hint}")
        if not source.strip():
            raise ValueError("source must be a file path or JSON text, got an empty string")
        if not source.lstrip().startswith("{"):
            return cls.load(source)
        try:
            return cls._parse(source, "result JSON text")
        except ValueError as exc:
            if _is_file(source):
                raise ValueError(f"{exc} (the string starts with '{{', so it was read as JSON text; to read the file "
                                 "of that name use SelectionResult.load(path) or pass a pathlib.Path)") from None
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> SelectionResult:
        """Read a result file (a path, never JSON text)."""
        if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
            raise TypeError(f"path must be a file path (str or pathlib.Path), got {type(path).__name__} {path!r}")
        path = Path(path)
        if not _is_file(path):
            folder = " (a folder)" if _is_file(path, folder=True) else ""
            raise FileNotFoundError(f"no result file {str(path)[:200]!r}{folder}")
        return cls._parse(path.read_text(encoding="utf-8"), f"result file {str(path)!r}")

    @classmethod
    def _parse(cls, text: str, where: str) -> SelectionResult:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            state = "empty" if not text.strip() else f"not valid JSON ({exc.msg} at line {exc.lineno})"
            raise ValueError(f"{where} is {state}: is it truncated, or not a result?") from None
        return cls.from_dict(d, where)

    @classmethod
    def from_dict(cls, d: object, where: str = "result") -> SelectionResult:
        """A result from the parsed JSON of :meth:`to_dict`, its content checked (:mod:`.result_checks`): axes of
        unique names and timesteps, arrays of the table's shape, finite totals in every live cell, the same number
        of samples in every cell, and the stored choices equal to those the table gives."""
        from .result_checks import check_result_dict, check_stored_choices

        fields = check_result_dict(d, where)
        result = cls(**fields)
        check_stored_choices(result, d, where)  # type: ignore[arg-type]
        return result

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
        best = self._best_or_none(name)
        t_best, tap_best = best if best is not None else (None, None)
        order = np.argsort(self.timesteps, kind="stable")  # lines run along t, whatever order a saved file has
        ts = np.asarray(self.timesteps)[order]
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
                mu, sd = self.mean[order, p, s], self.std[order, p, s]
                color, style = plt.get_cmap("tab10")(i % 10), styles[(i // 10) % len(styles)]
                ax.plot(ts, mu, style, color=color, lw=1.2, label=short_tap(tap))
                ax.fill_between(ts, mu - sd, mu + sd, color=color, alpha=0.08)
            if tap_best in members:
                ax.plot([t_best], [self.mean[self.timesteps.index(t_best), self.taps.index(tap_best), s]], "r*",
                        ms=14, label=f"chosen ({t_best}, {short_tap(tap_best)})")
            ax.set_xlabel("t (noise from clean)")
            ax.set_ylabel(f"{name} ({self.directions[name]} is best)")
            ax.set_title(kind or f"{plural(len(members), 'tap')}", fontsize=9)
            ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(members) // 16,
                      borderaxespad=0.0)
        dead = self.dead_cells(name)
        chosen = f"chosen (t, tap) = ({t_best}, {tap_best})" if best is not None else "no live cell to choose"
        dead_note = f"; {plural(len(dead), 'dead cell')} (every sample flagged)" if dead else ""
        fig.suptitle(f"A-SelecT scores: {name}, {plural(len(self.taps), 'tap')}; {chosen}{dead_note}",
                     fontsize=10)
        fig.tight_layout()
        return fig


#: Width of one table cell (``0.1234+-0.012*``) and the longest tap label used as a column heading.
_CELL = 14
_MAX_LABEL = 28
#: More tap kinds than this are plotted in one panel.
_MAX_PANELS = 6
_ABBREVIATION = {"transformer_blocks": "tb", "blocks": "b"}
_BLOCK_INDEX = re.compile(r"(?<![A-Za-z0-9_])(transformer_blocks|blocks)\.(\d+)(?=$|[.@\[])")


def _is_file(path: str | os.PathLike, folder: bool = False) -> bool:
    """Whether ``path`` names a file (a folder when ``folder``); a name too long or malformed names none."""
    try:
        return Path(path).is_dir() if folder else Path(path).is_file()
    except (OSError, ValueError):
        return False


def plural(n: int, noun: str) -> str:
    """``1 tap``, ``2 taps`` (the last word of ``noun`` takes the plural)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _abbreviations(taps: list[str]) -> list[str]:
    """The legend of the block abbreviations :func:`short_tap` used for these taps."""
    found = {m.group(1) for tap in taps for m in _BLOCK_INDEX.finditer(tap)}
    return [f"{_ABBREVIATION[k]}N = {k}.N" for k in ("transformer_blocks", "blocks") if k in found]


def _tap_kinds(taps: list[str]) -> dict[str, list[str]]:
    """Taps grouped by kind: the tap name with its block index replaced by ``N`` (``tbN.ff.net.0``)."""
    kinds: dict[str, list[str]] = {}
    for tap in taps:
        kinds.setdefault(_BLOCK_INDEX.sub(lambda m: _ABBREVIATION[m.group(1)] + "N", tap, count=1), []).append(tap)
    return kinds


def short_tap(tap: str) -> str:
    """A tap name shortened for tables: ``transformer_blocks.3.attn1.to_q`` -> ``tb3.attn1.to_q``,
    ``blocks.3.mlp`` -> ``b3.mlp``."""
    return _BLOCK_INDEX.sub(lambda m: _ABBREVIATION[m.group(1)] + m.group(2), tap)


def _cell_dict(cell: tuple[int, str] | None) -> dict | None:
    return None if cell is None else {"t": cell[0], "tap": cell[1]}


def _describe_cells(cells: list[tuple[int, str]], timesteps: list[int], limit: int = 6) -> str:
    """Dead cells in a few words: whole taps first (``tap at every t``), then single cells, at most ``limit``."""
    by_tap: dict[str, list[int]] = {}
    for t, tap in cells:
        by_tap.setdefault(tap, []).append(t)
    parts = [f"{tap} at every t" if len(ts) == len(timesteps) else f"{tap} at t={','.join(map(str, ts))}"
             for tap, ts in by_tap.items()]
    more = f", and {len(parts) - limit} more taps" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more + " (SelectionResult.dead_cells() lists them)"


def _nan_to_none(a: np.ndarray) -> list:
    return np.where(np.isfinite(a), a, None).tolist()
