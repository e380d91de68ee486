"""Noising at a timestep, through diffusers' schedulers, and the package's one timestep convention.

**Convention: t counts noise from clean.** ``t = 0`` is the cleanest candidate and larger t is noisier.

* ``"ddpm"``: integer ``t`` in ``[0, num_train_timesteps)``; ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``
  (``DDPMScheduler.add_noise``).  The model is called with ``timestep = t``.
* ``"flow"`` (rectified flow, SD3 / Flux): integer ``t`` in ``[0, num_train_timesteps]``; ``x_t = sigma eps +
  (1 - sigma) x0`` with ``sigma`` the scheduler's sigma for training timestep t
  (``FlowMatchEulerDiscreteScheduler.scale_noise``; ``sigma = t / 1000`` when ``shift = 1``).  ``t = 0`` is the
  clean image itself (``sigma = 0``), which the scheduler's training table does not list.  With a shift ``s``
  the scheduler's sigma is ``s u / (1 + (s - 1) u)``, ``u = t / 1000``; Flux's shift depends on the image token
  count (:func:`flux_shift`; ``noise="flux"`` in :func:`~aselect_kernels.select.select_timestep`).

Inference-time conventions index ``scheduler.timesteps``, which runs from noisy to clean.  With 1000 inference
steps, index ``i`` is ``t = 999 - i`` for DDPM and ``t = 1000 - i`` for flow matching: the official A-SelecT
code's "1000 - t".  :func:`timestep_from_index` converts for any scheduler.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

NOISE_FAMILIES = ("ddpm", "flow")


_INT_TEXT = re.compile(r"^[+-]?\d+$")


def as_timestep(value: object) -> int:
    """One timestep as an int: Python/NumPy integers, integral floats and 0-d integral tensors; bools, fractional
    values and anything else raise (a timestep is never rounded)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"a timestep must be a single integer, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"a timestep must be an integer, got the bool {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"timesteps are integers, got {value!r}")
        return int(value)
    if isinstance(value, str) and _INT_TEXT.match(value.strip()):
        return int(value.strip())
    raise TypeError(f"a timestep must be an integer, got {type(value).__name__} {value!r}")


def parse_timesteps(spec: str | Sequence[int] | torch.Tensor) -> list[int]:
    """Parse a comma list whose items are ints or ``start:stop[:step]`` ranges (stop exclusive), e.g.
    ``"0:1000:50"``, ``"10,50,100"`` or ``"0,10,25,50:1000:50"``; or a sequence of ints (integral floats are
    accepted, fractions and bools are not).  Returns the timesteps **sorted ascending**, so tables and plots
    always run from clean to noisy; a duplicate is an error (:meth:`Noiser.check`)."""
    if spec is None:
        raise TypeError("timesteps must be a string like '0:1000:50' or a sequence of ints, got None")
    if isinstance(spec, str):
        values = []
        for item in (p.strip() for p in spec.split(",")):
            if not item:
                continue
            parts = item.split(":")
            if not all(_INT_TEXT.match(p.strip()) for p in parts) or len(parts) > 3 or (
                    len(parts) == 3 and int(parts[2]) <= 0):
                raise ValueError(f"cannot parse timesteps {spec!r} at {item!r}: use start:stop:step (step > 0), "
                                 "a comma list of integers, or both")
            values += list(range(*map(int, parts))) if len(parts) > 1 else [int(parts[0])]
    elif isinstance(spec, torch.Tensor) and spec.dim() == 0:
        values = [as_timestep(spec)]
    elif isinstance(spec, (int, float, np.integer, np.floating, bool, np.bool_)):
        values = [as_timestep(spec)]
    else:
        try:
            items = spec.tolist() if isinstance(spec, (torch.Tensor, np.ndarray)) else list(spec)
        except TypeError:
            raise TypeError(f"timesteps must be a string like '0:1000:50' or a sequence of ints, "
                            f"got {type(spec).__name__}") from None
        values = [as_timestep(v) for v in items]
    if not values:
        raise ValueError(f"timesteps {spec!r} give an empty list")
    return sorted(values)


@dataclass
class Noiser:
    """Noise clean images at integer timesteps with a diffusers scheduler (see the module docstring).

    Args:
        family: ``"ddpm"`` or ``"flow"``.
        scheduler: a diffusers ``DDPMScheduler`` / ``FlowMatchEulerDiscreteScheduler``; a default one is built
            when ``None`` (``num_train_timesteps=1000``; flow uses ``shift``).
        shift: flow-matching sigma shift of the default scheduler (SD3 uses 3.0; Flux :func:`flux_shift`).
    """

    family: str = "ddpm"
    scheduler: object | None = None
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.family not in NOISE_FAMILIES:
            raise ValueError(f"noise family must be one of {NOISE_FAMILIES}, got {self.family!r}")
        if self.scheduler is None:
            from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

            self.scheduler = (
                DDPMScheduler(num_train_timesteps=1000) if self.family == "ddpm"
                else FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=self.shift)
            )

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def t_range(self) -> tuple[int, int]:
        """Inclusive range of valid t."""
        t_max = self.num_train_timesteps - 1 if self.family == "ddpm" else self.num_train_timesteps
        return 0, t_max

    def check(self, timesteps: Sequence[int]) -> list[int]:
        """Validate a candidate list: non-empty, integers (never rounded), in range, no duplicates; order kept."""
        ts = [as_timestep(t) for t in timesteps]
        if not ts:
            raise ValueError("the timestep list is empty")
        lo, hi = self.t_range
        bad = [t for t in ts if t < lo or t > hi]
        if bad:
            raise ValueError(f"timesteps {bad[:5]} out of range [{lo}, {hi}] for the {self.family} scheduler")
        if len(set(ts)) != len(ts):
            raise ValueError(f"duplicate timesteps in {ts}")
        return ts

    def _flow_sigma(self, t: torch.Tensor) -> torch.Tensor:
        # The scheduler's training table runs noisy -> clean: entry i holds our t = N - i (t = 1 .. N); t = 0 is
        # the clean end (sigma 0).  Gathered on the device: no host synchronisation per chunk.
        table = getattr(self, "_sigma_table", None)
        if table is None or table.device != t.device:
            sig = self.scheduler.sigmas[: self.num_train_timesteps].to(device=t.device, dtype=torch.float32)
            table = self._sigma_table = torch.cat([torch.zeros(1, device=t.device), sig.flip(0)])  # index = t
        return table[t.to(torch.long)]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` for clean ``x0`` ``[n, ...]``, noise of the same shape and integer ``t`` ``[n]``."""
        if self.family == "ddpm":
            return self.scheduler.add_noise(x0, noise, t.to(torch.long))
        # FlowMatchEulerDiscreteScheduler.scale_noise's interpolation, with its sigma table gathered on the device
        sigma = self._flow_sigma(t).to(x0.dtype).reshape(-1, *([1] * (x0.dim() - 1)))
        return sigma * noise + (1.0 - sigma) * x0

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The ``timestep`` argument the model expects for our t (DDPM: t; flow: sigma * 1000)."""
        if self.family == "ddpm":
            return t.to(torch.long)
        return self.sigma(t) * self.num_train_timesteps

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Noise level: DDPM ``sqrt(1 - abar_t)``; flow the scheduler's sigma (0 at t = 0)."""
        if self.family == "ddpm":
            abar = self.scheduler.alphas_cumprod.to(t.device)[t.to(torch.long)]
            return torch.sqrt(1 - abar)
        return self._flow_sigma(t)


def flux_shift(image_tokens: int, base_tokens: int = 256, max_tokens: int = 4096, base_shift: float = 0.5,
               max_shift: float = 1.15) -> float:
    """The flow-matching shift Flux uses at ``image_tokens`` tokens: ``exp(mu)``, ``mu`` linear in the token count
    through ``(base_tokens, base_shift)`` and ``(max_tokens, max_shift)`` (extrapolated outside); the defaults
    are Flux's scheduler configuration (``base_image_seq_len``, ``max_image_seq_len``, ``base_shift``,
    ``max_shift``).

    Flux's pipeline applies ``sigma' = e^mu / (e^mu + (1 / sigma - 1))`` (the scheduler's exponential time shift),
    which is the static shift ``s sigma / (1 + (s - 1) sigma)`` with ``s = e^mu``: ``Noiser("flow",
    shift=flux_shift(L))`` noises as Flux does at that resolution.
    """
    if image_tokens < 1:
        raise ValueError(f"image_tokens must be >= 1, got {image_tokens}")
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (image_tokens - base_tokens)
    return math.exp(mu)


def timestep_from_index(index: int, scheduler: object) -> int:
    """Our t for position ``index`` of ``scheduler.timesteps`` (which runs noisy -> clean).

    DDPM schedulers list training timesteps directly; flow-matching ones list ``sigma * 1000``, which is our t
    when ``shift = 1``.
    """
    return int(round(float(scheduler.timesteps[index])))


def sample_noise(shape: Sequence[int], seed: int, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """Seeded standard normal noise, identical on every device (drawn on the CPU, then moved)."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(tuple(shape), generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
