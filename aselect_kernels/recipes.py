"""Named recipes: a published method's settings in one word (``select_timestep(..., recipe="aselect")``).

``aselect`` is A-SelecT as published (Liu et al., CVPR 2026): attention-query taps, the high-frequency energy
ratio ``hfr`` (max) with the official config's ``CUTOFF 0.15`` along the 1-D token order (``LOW_FREQ_1D``),
rectified-flow noise with **the model's own scheduler shift**, and the paper's timestep count shown beside the
package's.  Two readings of the cutoff exist; ``aselect`` reads 0.15 in cycles per token (numpy's ``fftfreq``,
0.30 of Nyquist in the package's ``cutoff``), ``aselect-nyquist`` as a fraction of Nyquist (docs/RECIPE.md says
why the first is the default).

**Explicit arguments.**  A recipe fixes ``taps``, ``scorer``, ``direction``, ``config`` and ``noise``.  Passing
one of them with a recipe is an error when it contradicts the recipe; agreeing values are accepted (``taps`` may
name a subset of the query taps, e.g. ``"query:9"``), and ``noise`` may be a :class:`~aselect_kernels.noise.
Noiser` of the recipe's family, which then replaces the model's scheduler (recorded as ``given``).  Every other
argument (timesteps, images, seed, chunking, ...) is the caller's.
"""

from __future__ import annotations

import functools
import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .noise import Noiser, flux_shift
from .reference import StatsConfig
from .scorers import Scorer


class RecipeWarning(UserWarning):
    """A recipe setting had to be assumed (no scheduler config was found for the model)."""


@dataclass(frozen=True)
class Recipe:
    """A method's settings.  ``cutoff`` is in the package's unit (a fraction of Nyquist); ``paper_cutoff`` and
    ``cutoff_units`` say how the published value was read."""

    name: str
    taps: str
    scorer: str
    direction: str
    cutoff: float
    paper_cutoff: float
    cutoff_units: str
    hfr_dims: int = 1

    @property
    def config(self) -> StatsConfig:
        return StatsConfig(cutoff=self.cutoff, hfr_dims=self.hfr_dims)


#: Cycles per token at Nyquist: a cutoff in ``fftfreq`` units is twice as large as a fraction of Nyquist.
NYQUIST_FFTFREQ = 0.5
RECIPES: dict[str, Recipe] = {
    "aselect": Recipe("aselect", "query", "hfr", "max", 0.15 / NYQUIST_FFTFREQ, 0.15, "fftfreq"),
    "aselect-nyquist": Recipe("aselect-nyquist", "query", "hfr", "max", 0.15, 0.15, "nyquist"),
}
GOVERNED = ("taps", "scorer", "direction", "config", "noise")
#: Scheduler classes whose noise is rectified flow; any other diffusers scheduler is read as DDPM-style.
_FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: SD3's shipped scheduler shift (SD3-medium and SD3.5): assumed, with a warning, when no scheduler config is found.
SD3_SHIFT = 3.0


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown recipe {name!r}; have {sorted(RECIPES)}") from None


def scheduler_config(model: nn.Module) -> tuple[dict | None, str | None]:
    """The model's own scheduler config and where it was found: ``scheduler/scheduler_config.json`` beside the
    transformer folder it was loaded from (a diffusers pipeline folder), or in the local hub cache for a hub id."""
    origin = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not origin:
        return None, None
    path = Path(str(origin)).expanduser()
    for root in (path, path.parent):
        found = root / "scheduler" / "scheduler_config.json"
        if found.is_file():
            return json.loads(found.read_text(encoding="utf-8")), str(found)
    if path.exists():
        return None, None
    try:  # a hub id: only what the local cache holds, no network
        from huggingface_hub import hf_hub_download

        found = hf_hub_download(str(origin), "scheduler_config.json", subfolder="scheduler", local_files_only=True)
        return json.loads(Path(found).read_text(encoding="utf-8")), f"{origin}/scheduler/scheduler_config.json"
    except Exception:  # noqa: BLE001 - not cached, not a repo: no config
        return None, None


def _token_count(model: nn.Module, images: torch.Tensor) -> int:
    from .flux import image_tokens
    from .taps import model_family

    if model_family(model) == "flux":
        return image_tokens(images)
    patch = int(getattr(getattr(model, "config", None), "patch_size", 1) or 1)
    return (images.shape[-2] // patch) * (images.shape[-1] // patch)


def model_noiser(model: nn.Module, images: torch.Tensor) -> tuple[Noiser, dict]:
    """The model's own noise: family and shift from its scheduler config when one is found (a dynamic shift,
    as Flux's, taken for the images' token count), otherwise assumed from the model family, with a
    :class:`RecipeWarning`.  Returns the noiser and how it was found."""
    from .taps import model_family

    cfg, where = scheduler_config(model)
    if cfg is not None:
        if cfg.get("_class_name") not in _FLOW_SCHEDULERS:
            return Noiser("ddpm"), {"shift_source": where, "scheduler": cfg.get("_class_name")}
        if cfg.get("use_dynamic_shifting"):
            shift = flux_shift(_token_count(model, images), cfg.get("base_image_seq_len", 256),
                               cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                               cfg.get("max_shift", 1.15))
            return Noiser("flow", shift=shift), {"shift_source": f"{where} (dynamic, for the images' tokens)",
                                                 "scheduler": cfg["_class_name"]}
        return Noiser("flow", shift=float(cfg.get("shift", 1.0))), {"shift_source": where,
                                                                    "scheduler": cfg["_class_name"]}
    family = model_family(model)
    if family == "flux":
        from .flux import flux_noiser

        noiser, why = flux_noiser(images), "Flux's default dynamic shift (no scheduler config found)"
    elif family == "sd3":
        noiser, why = Noiser("flow", shift=SD3_SHIFT), "SD3's published shift 3.0 (no scheduler config found)"
    else:
        noiser, why = Noiser("ddpm"), "DDPM, the DiT family's training noise (no scheduler config found)"
    warnings.warn(f"recipe: {why}; pass noise=Noiser(...) to give the model's scheduler", RecipeWarning,
                  stacklevel=4)
    return noiser, {"shift_source": why, "scheduler": None}


def _conflict(recipe: Recipe, arg: str, value: object, wanted: object) -> ValueError:
    return ValueError(f"recipe {recipe.name!r} sets {arg}={wanted!r}, but {arg}={value!r} was given: drop it, or "
                      f"drop the recipe and set each argument yourself")


def _check_taps(model: nn.Module, recipe: Recipe, taps: object, text_tokens: int | None) -> None:
    from .taps import resolve_taps

    allowed = {s.name for s in resolve_taps(model, recipe.taps, text_tokens=text_tokens)}
    given = [s.name for s in resolve_taps(model, taps, text_tokens=text_tokens)]
    if not set(given) <= allowed:
        raise _conflict(recipe, "taps", taps, f"{recipe.taps} (or a subset, e.g. '{recipe.taps}:9')")


def resolve(name: str, given: dict) -> tuple[dict, dict]:
    """The arguments a recipe sets, checked against those ``given`` explicitly (see the module docstring), and the
    record of how they were set (``meta["recipe"]``)."""
    from .scorers import get_scorer

    recipe = get_recipe(name)
    model, images = given["model"], given["images"]
    if "taps" in given:
        text = getattr(given.get("conditioning"), "encoder_hidden_states", None)  # Flux: text tokens come first
        _check_taps(model, recipe, given["taps"], int(text.shape[1]) if text is not None and text.dim() == 3 else None)
    if "scorer" in given:
        scorer = get_scorer(given["scorer"]) if not isinstance(given["scorer"], Scorer) else given["scorer"]
        if (scorer.name, scorer.stat, scorer.direction) != (recipe.scorer, recipe.scorer, recipe.direction):
            raise _conflict(recipe, "scorer", scorer.name, recipe.scorer)
    if given.get("direction") not in (None, recipe.direction):
        raise _conflict(recipe, "direction", given["direction"], recipe.direction)
    if "config" in given and given["config"] != recipe.config:
        other = [r.name for r in RECIPES.values() if r.config == given["config"]]
        hint = f" (that is recipe {other[0]!r})" if other else ""
        raise ValueError(f"recipe {recipe.name!r} sets config={recipe.config!r}, but config={given['config']!r} was "
                         f"given{hint}: drop it, or drop the recipe and set each argument yourself")
    noise = given.get("noise")
    if noise is not None and not isinstance(noise, Noiser):
        raise ValueError(f"recipe {recipe.name!r} takes the model's own scheduler (its noise family and shift), but "
                         f"noise={noise!r} was given: drop it, or give the scheduler as noise=Noiser(family, "
                         "scheduler=...)")
    if isinstance(noise, Noiser):
        noiser, how = noise, {"shift_source": "given", "scheduler": type(noise.scheduler).__name__}
    else:
        noiser, how = model_noiser(model, images)
    settings = {"taps": given.get("taps", recipe.taps), "scorer": recipe.scorer, "direction": recipe.direction,
                "config": recipe.config, "noise": noiser}
    record = {**asdict(recipe), "token_order": "1-D, the model's token order (row-major patches)",
              "noise": noiser.family,
              "flow_shift": float(noiser.scheduler.config.get("shift", 1.0)) if noiser.family == "flow" else None,
              **how, "paper_timestep": f"{noiser.t_range[1]} - t"}
    return settings, record


def paper_timestep(t: int, t_max: int) -> int:
    """The official A-SelecT code's count, ``t_max - t``: the index of our t in the scheduler's noisy-to-clean
    table (flow: 1000 - t; DDPM: 999 - t)."""
    return t_max - t


def accepts_recipe(fn: Callable) -> Callable:
    """Let ``fn`` (:func:`~aselect_kernels.select.select_timestep`) take ``recipe=``: the recipe's settings replace
    the governed arguments, checked against those given explicitly, and the result records them in
    ``meta["recipe"]`` and the paper's timesteps in ``meta["paper_timesteps"]``."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> object:
        bound = signature.bind(*args, **kwargs)
        name = bound.arguments.pop("recipe", None)
        if name is None:
            return fn(*args, **kwargs)
        settings, record = resolve(name, dict(bound.arguments))
        result = fn(**{**bound.arguments, **settings})
        t_max = int(record["paper_timestep"].split()[0])
        result.meta["recipe"] = record
        result.meta["paper_timesteps"] = [paper_timestep(t, t_max) for t in result.timesteps]
        return result

    return wrapper
