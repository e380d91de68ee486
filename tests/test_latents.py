"""Images to latents with a real (tiny) ``AutoencoderKL``, in Python and through ``select``'s ``--vae``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aselect_kernels.cli import main
from aselect_kernels.latents import encode_images, find_vae, load_vae

SCALE, SHIFT = 0.5, 0.25


def tiny_vae(shift: float | None = SHIFT):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=SCALE,
                         shift_factor=shift).eval()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A pipeline folder: a latent DiT (4 x 16 x 16 latents, 64 tokens) in transformer/ and the VAE that makes them
    in vae/."""
    from diffusers import DiTTransformer2DModel

    root = tmp_path_factory.mktemp("pipe")
    tiny_vae().save_pretrained(root / "vae")
    torch.manual_seed(0)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
                          sample_size=16, patch_size=2, num_embeds_ada_norm=10, norm_num_groups=1
                          ).eval().save_pretrained(root / "transformer")
    rng = np.random.default_rng(0)
    np.savez(root / "rgb.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8))
    return root


@pytest.mark.parametrize("shift", [SHIFT, None])
def test_encode_images_is_the_shifted_scaled_posterior_mean(tmp_path, shift):
    """diffusers' pipelines: latents = (z - shift_factor) * scaling_factor, z the posterior mean (shift 0 if none)."""
    vae = tiny_vae(shift)
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path)  # a pipeline folder: its vae/
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    latents = encode_images(loaded, images, batch_size=2)
    with torch.no_grad():
        z = vae.encode(images).latent_dist.mean
    assert latents.shape == (5, 4, 4, 4)
    torch.testing.assert_close(latents, (z - (shift or 0.0)) * SCALE, rtol=1e-5, atol=1e-6)


def test_encode_images_refuses_what_the_vae_cannot_take():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="3-channel images, got 1"):
        encode_images(vae, torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="multiples of 2, got 7x8"):
        encode_images(vae, torch.zeros(1, 3, 7, 8))


def test_find_vae_beside_a_transformer_or_in_a_pipeline(pipeline, tmp_path):
    assert find_vae(pipeline) == pipeline / "vae"
    assert find_vae(pipeline / "transformer") == pipeline / "vae"
    assert find_vae(tmp_path) is None and find_vae("embedded") is None


def test_select_encodes_with_the_pipeline_vae(pipeline, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["select", "--model", str(pipeline), "--images", str(pipeline / "rgb.npz"), "--timesteps", "0,500",
            "--taps", "query:0", "--backend", "torch", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    assert "encoded 3 images (3, 32, 32) with the VAE in" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["meta"]["image_shape"] == [4, 16, 16]
    assert main([*argv, "--vae", str(pipeline / "vae")]) == 0  # named explicitly: the same
    capsys.readouterr()
    assert main([*argv, "--vae", "none"]) == 2
    err = capsys.readouterr().err
    assert "takes 4-channel inputs but the images have 3 channels" in err and "--vae" in err
    assert main([*argv, "--vae", str(tmp_path / "missing")]) == 2
    assert "--vae" in capsys.readouterr().err
