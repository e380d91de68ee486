"""Checks the commands run before any heavy work, and the facts about this process they need."""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..outputs import interrupts_held

#: Widest line the command prints.
WIDTH = 120


class CliError(Exception):
    """A user error reported as one line."""


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, then removed: permission bits do not bind root)."""
    with interrupts_held():  # Ctrl-C here leaves no check file behind
        try:
            fd, name = tempfile.mkstemp(dir=folder, prefix=".aselect-write-check-")
        except OSError:
            return False
        os.close(fd)
        os.unlink(name)
    return True


def check_out(value: str, files: Sequence[str] = (), flag: str = "--out") -> Path:
    """The output folder ``value``, checked before the work: not a file, not under a file, writable, and none of
    the ``files`` to be written in it is a folder.  Nothing is created yet."""
    out = Path(value).expanduser()
    if not value.strip():
        raise CliError(f"{flag} is empty: give a folder")
    if out.exists() and not out.is_dir():
        raise CliError(f"{flag} {value} is an existing file, not a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{flag} {value} lies under {parent}, which is a file")
    if not _writable(parent):
        raise CliError(f"{flag} {value}: cannot write in {parent}")
    for name in files:
        if (out / name).is_dir():
            raise CliError(f"{flag} {value}: {out / name} is a folder, so it cannot be written")
    return out


def resolve_device(name: str) -> Any:
    import torch

    from .. import distributed

    if distributed.active() and name in ("auto", "cuda"):  # under torchrun: this rank's device
        return distributed.local_device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CliError(f"unknown --device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"device {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise CliError(f"--device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return dev


def model_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def check_timesteps(timesteps: str, noise: str = "ddpm") -> list[int]:
    from ..noise import Noiser, parse_timesteps

    return Noiser("flow" if noise == "flux" else noise).check(parse_timesteps(timesteps))


def check_selection_args(args: argparse.Namespace) -> None:
    """What the selection arguments say on their own: timesteps for the noise family, the frequency settings, and
    under ``--recipe`` the options that contradict it.  Without a recipe the unset options take their defaults."""
    from ..arguments import check_seed
    from ..constants import RECIPE_OPTIONS
    from ..reference import StatsConfig

    check_seed(args.seed, "--seed")
    if args.recipe:
        _check_recipe_args(args)
        check_timesteps(args.timesteps, "flow")  # the widest range; the model's own family is known after loading
        return
    for name, default in RECIPE_OPTIONS.items():
        if name == "scorer" and getattr(args, "labels", False):
            continue  # with --labels the few-label criterion selects unless a scorer is named
        if getattr(args, name) is None:
            setattr(args, name, default)
    check_timesteps(args.timesteps, args.noise)
    StatsConfig(cutoff=args.cutoff, hfr_dims=args.hfr_dims)


def _scorer_name(args: argparse.Namespace) -> str:
    """The scorer the selection will use: the one given, the recipe's, or the default."""
    from ..constants import DEFAULT_SCORER
    from ..recipes import get_recipe

    return args.scorer or (get_recipe(args.recipe).scorer if getattr(args, "recipe", None) else DEFAULT_SCORER)


def _scorers(args: argparse.Namespace) -> list:
    """The label-free scorer that selects, as a one-item list; none when few labels select (``--labels``)."""
    from ..constants import LABEL_CRITERIA
    from ..scorers import get_scorer

    if getattr(args, "labels", False) and (args.scorer is None or args.scorer in LABEL_CRITERIA):
        return []
    return [get_scorer(_scorer_name(args))]


def check_image_count(args: argparse.Namespace, n_images: int) -> None:
    """Enough images for the scorer, before the model loads (the library's rule, :mod:`..geometry`)."""
    from ..geometry import check_image_count as check

    check(n_images, _scorers(args), "--limit" if getattr(args, "limit", None) else "--images")


def check_cost(args: argparse.Namespace, n_images: int) -> None:
    """Refuse a costly selection before the model loads (``--yes`` runs it; ``--dry-run`` shows its plan)."""
    from ..noise import parse_timesteps
    from ..plan import check_cost as refuse_costly

    draws = 2 if any(s.pair_fn is not None for s in _scorers(args)) else 1
    if not args.dry_run:
        refuse_costly(n_images * len(parse_timesteps(args.timesteps)), draws, args.yes)


def _check_recipe_args(args: argparse.Namespace) -> None:
    """``--recipe`` with options it sets: the same rule as the library's, found before the model loads."""
    from ..recipes import get_recipe

    recipe = get_recipe(args.recipe)
    clash = [f"--{flag.replace('_', '-')} {given}" for flag, given, wanted in (
        ("scorer", args.scorer, recipe.scorer), ("direction", args.direction, recipe.direction),
        ("cutoff", args.cutoff, recipe.cutoff), ("hfr_dims", args.hfr_dims, recipe.hfr_dims))
        if given is not None and given != wanted]
    if args.noise is not None:
        clash.append(f"--noise {args.noise} (the recipe takes the model's own scheduler)")
    if clash:
        raise CliError(f"--recipe {recipe.name} sets scorer {recipe.scorer} ({recipe.direction}), cutoff "
                       f"{recipe.cutoff:g} of Nyquist ({recipe.paper_cutoff} in {recipe.cutoff_units} units), 1-D "
                       f"frequencies and the model's own noise, but {', '.join(clash)} was given: drop it")


def check_labels(model: Any, labels: Any) -> None:
    """``--use-labels``: the library's one rule (:func:`~aselect_kernels.geometry.check_use_labels`): the model
    takes class labels, and every label is one of its real classes (not the null class)."""
    from ..geometry import check_use_labels

    check_use_labels(model, labels, "--use-labels")


def under_launcher() -> bool:
    """Whether this process is one rank of a ``torchrun`` launch (its environment names a world)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def is_main() -> bool:
    """Whether this process prints and writes: always, except on ranks other than 0 of a process group."""
    if not under_launcher():
        return True
    from .. import distributed

    return distributed.is_main()
