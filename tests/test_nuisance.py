"""The noisy benchmark data: seeded, deterministic, label-independent Gaussian pixel noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from aselect_kernels.validation.datasets import NOISE_STD, add_pixel_noise, load_dataset


def test_noise_is_seeded_and_leaves_the_input_alone():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(5, 7, 9), dtype=np.uint8)
    before = img.copy()
    a = add_pixel_noise(img, seed=4, stream=1)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, add_pixel_noise(img, seed=4, stream=1))
    assert (a != add_pixel_noise(img, seed=4, stream=2)).mean() > 0.5
    assert (a != add_pixel_noise(img, seed=5, stream=1)).mean() > 0.5
    np.testing.assert_array_equal(img, before)
    np.testing.assert_array_equal(add_pixel_noise(img, std=0.0), img)


@pytest.mark.parametrize("level", [0, 128])
def test_noise_moments_match_the_clipped_normal(level):
    """Mean and std of clip(level/255 + s z, 0, 1) against scipy's normal distribution (numerical integral)."""
    img = np.full((200, 50, 50), level, dtype=np.uint8)
    out = add_pixel_noise(img, std=NOISE_STD, seed=0).astype(np.float64) / 255.0
    z = np.linspace(-9, 9, 200001)
    v = np.clip(level / 255.0 + NOISE_STD * z, 0.0, 1.0)
    w = norm.pdf(z) * (z[1] - z[0])
    mean = float((v * w).sum())
    std = float(np.sqrt(((v - mean) ** 2 * w).sum()))
    assert abs(out.mean() - mean) < 2e-3  # rounding to uint8 moves the mean by far less than this
    assert abs(out.std() - std) < 2e-3


def test_noise_rejects_bad_input():
    with pytest.raises(TypeError, match="uint8"):
        add_pixel_noise(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="std"):
        add_pixel_noise(np.zeros((2, 3), dtype=np.uint8), std=-0.1)


@pytest.mark.parametrize("name", ["fashion_noise", "digits_noise", "mnist_noise"])
def test_noisy_datasets_keep_labels_and_noise_prefixes(name):
    base = name.removesuffix("_noise")
    (ctr, cytr), (cte, cyte), _ = load_dataset(base, 40, 30)
    (ntr, nytr), (nte, nyte), k = load_dataset(name, 40, 30)
    (ptr, _), _, _ = load_dataset(name, 15, 30)
    assert k == 10 and ntr.dtype == torch.uint8
    torch.testing.assert_close(nytr, cytr)
    torch.testing.assert_close(nyte, cyte)
    torch.testing.assert_close(ptr, ntr[:15])  # the first n images are noised the same whatever n is
    np.testing.assert_array_equal(ntr.numpy(), add_pixel_noise(ctr.numpy(), stream=1))  # train stream, seed 0
    diff = ntr.float() - ctr.float()
    assert 40 < diff.std() < 80  # std 0.3 of 255 is 76.5 before clipping


def test_noisy_dataset_defaults():
    (xtr, _), (xte, _), _ = load_dataset("fashion_noise")
    assert (len(xtr), len(xte)) == (300, 500)


def test_validate_on_a_noisy_dataset_reports_the_margin_over_the_smallest_t(tmp_path, capsys):
    import json

    from aselect_kernels.cli import main

    out = tmp_path / "val"
    rc = main(["validate", "--dataset", "digits_noise", "--n-train", "24", "--n-test", "16", "--n-select", "4",
               "--timesteps", "100,0", "--taps", "block_out:5", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "over t=0 at that tap, 95% CI" in capsys.readouterr().out
    report = json.loads((out / "validation_digits_noise.json").read_text())
    assert "dense" not in report and report["n_train"] == 24  # no dense target from noisy pixels
    grid = report["classification"]["grid"]
    best = report["classification"]["tap_sets"]["all"]["best"]
    metric = np.asarray(grid["metric"]) * 100
    p = grid["taps"].index(best["tap"])
    v = best["vs_smallest_t"]
    assert v["t"] == 0 and grid["timesteps"] == [0, 100]  # the grid is sorted
    assert abs(v["margin"] - (best["metric"] - metric[0, p])) < 1e-9
    assert v["ci95"][0] <= v["margin"] <= v["ci95"][1]
