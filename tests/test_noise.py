"""Noising through diffusers' schedulers against the closed-form formulas, and the timestep convention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aselect_kernels.noise import Noiser, parse_timesteps, sample_noise, timestep_from_index


def test_ddpm_matches_closed_form():
    betas = np.linspace(1e-4, 0.02, 1000)  # DDPMScheduler's default linear schedule
    abar = np.cumprod(1 - betas)
    x0, eps = torch.randn(4, 1, 5, 5, dtype=torch.float64), torch.randn(4, 1, 5, 5, dtype=torch.float64)
    t = torch.tensor([0, 17, 500, 999])
    got = Noiser("ddpm").add_noise(x0, eps, t)
    a = torch.from_numpy(abar[t.numpy()]).reshape(-1, 1, 1, 1)
    # the scheduler keeps abar in float32: at t = 0, sqrt(1 - abar) = 0.01 inherits a relative error near 3e-4 from
    # the rounding of abar (6e-8), i.e. up to ~1.5e-5 absolute on |eps| <= 5
    torch.testing.assert_close(got, a.sqrt() * x0 + (1 - a).sqrt() * eps, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(Noiser("ddpm").sigma(t).double(), torch.from_numpy(np.sqrt(1 - abar[t.numpy()])),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_matches_closed_form(shift):
    x0, eps = torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    t = torch.tensor([0, 1, 400, 1000])
    noiser = Noiser("flow", shift=shift)
    u = t.double() / 1000
    sigma = (shift * u / (1 + (shift - 1) * u)).float()
    torch.testing.assert_close(noiser.sigma(t), sigma, rtol=1e-5, atol=1e-6)
    s = sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(noiser.add_noise(x0, eps, t), s * eps + (1 - s) * x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(noiser.model_timestep(t), sigma * 1000, rtol=1e-5, atol=1e-3)
    assert torch.equal(noiser.add_noise(x0, eps, torch.zeros(4, dtype=torch.long)), x0)  # t = 0 is clean
    # the scheduler's own scale_noise at the table entries of t = 1 .. 1000
    sched = noiser.scheduler
    table_t = sched.timesteps[1000 - t[1:]]
    torch.testing.assert_close(noiser.add_noise(x0[1:], eps[1:], t[1:]), sched.scale_noise(x0[1:], table_t, eps[1:]))


def test_scheduler_index_convention():
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    ddpm = DDPMScheduler(num_train_timesteps=1000)
    ddpm.set_timesteps(1000)
    assert [timestep_from_index(i, ddpm) for i in (0, 1, 999)] == [999, 998, 0]
    flow = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    assert [timestep_from_index(i, flow) for i in (0, 1, 999)] == [1000, 999, 1]


def test_ranges_and_parsing():
    assert Noiser("ddpm").t_range == (0, 999) and Noiser("flow").t_range == (0, 1000)
    assert parse_timesteps("0:1000:50") == list(range(0, 1000, 50))
    assert parse_timesteps("10, 50,100") == [10, 50, 100]
    assert parse_timesteps("0,10,25,50:200:50") == [0, 10, 25, 50, 100, 150]
    assert parse_timesteps(torch.tensor([3, 4])) == [3, 4]
    with pytest.raises(ValueError, match="out of range"):
        Noiser("ddpm").check([0, 1000])
    with pytest.raises(ValueError, match="out of range"):
        Noiser("flow").check([-1])
    with pytest.raises(ValueError, match="duplicate"):
        Noiser("ddpm").check([5, 5])
    with pytest.raises(ValueError, match="empty"):
        Noiser("ddpm").check([])
    with pytest.raises(ValueError, match="cannot parse"):
        parse_timesteps("0:10:0")


def test_noise_is_seeded():
    a = sample_noise((2, 3), 7, "cpu", torch.float32)
    assert torch.equal(a, sample_noise((2, 3), 7, "cpu", torch.float32))
    assert not torch.equal(a, sample_noise((2, 3), 8, "cpu", torch.float32))
    gen = torch.Generator().manual_seed(7)  # the documented recipe: a CPU generator, then moved
    assert torch.equal(a, torch.randn(2, 3, generator=gen))
    assert torch.equal(sample_noise((2, 3), 7, "cpu", torch.float64), a.double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (CUDA)")
def test_noise_is_device_independent():
    a = sample_noise((4, 5), 3, "cpu", torch.float32)
    assert torch.equal(sample_noise((4, 5), 3, "cuda", torch.float32).cpu(), a)
