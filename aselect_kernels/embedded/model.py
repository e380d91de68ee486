"""The embedded default model: a small class-conditional pixel-space DiT for Fashion-MNIST.

The embedded model is a diffusers :class:`~diffusers.DiTTransformer2DModel` on 1 x 28 x 28 images with 2 x 2
patches (a 14 x 14 grid, 196 tokens) that predicts the DDPM noise epsilon.  It is conditioned on the 10
Fashion-MNIST classes; diffusers' ``LabelEmbedding`` (built with ``class_dropout_prob=0.1 > 0``) appends one
extra row to each class table, index ``num_embeds_ada_norm`` = :data:`NULL_CLASS`, the unconditional class.

diffusers is imported only where a diffusers model is built or loaded, so the constants below (and every module
that reads them) import without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..forward import INPUT_RANGE_ATTR
from ..hub import pretrained_kwargs

if TYPE_CHECKING:
    from diffusers import DiTTransformer2DModel

#: Value range of the embedded model's inputs (pixels scaled from [0, 255]).
INPUT_RANGE = (-1.0, 1.0)
#: Number of Fashion-MNIST classes.
NUM_CLASSES = 10
#: Index of diffusers' unconditional ("null") label row, appended after the real classes.
NULL_CLASS = NUM_CLASSES

#: Architecture of the embedded model (keyword arguments of ``DiTTransformer2DModel``).
EMBEDDED_CONFIG: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": 1,
    "sample_size": 28,
    "patch_size": 2,
    "num_layers": 6,
    "num_attention_heads": 3,
    "attention_head_dim": 32,
    "num_embeds_ada_norm": NUM_CLASSES,
    "norm_type": "ada_norm_zero",
    "activation_fn": "gelu-approximate",
    "norm_num_groups": 32,
}

#: Folder of the shipped weights (``save_pretrained`` layout).
EMBEDDED_DIR = Path(__file__).resolve().parent / "assets" / "model"

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def build_model(config: dict[str, Any] | None = None) -> DiTTransformer2DModel:
    """Build a freshly initialised DiT from ``EMBEDDED_CONFIG`` updated with ``config``."""
    from diffusers import DiTTransformer2DModel

    kwargs = dict(EMBEDDED_CONFIG)
    if config:
        kwargs.update(config)
    return DiTTransformer2DModel(**kwargs)


def set_label_dropout(model: torch.nn.Module, prob: float) -> None:
    """Set the label-dropout probability of every diffusers ``LabelEmbedding`` inside ``model``.

    diffusers drops labels independently in each block while in train mode; the trainer sets this to 0 and
    drops labels itself, consistently for the whole network.  The table size (with the null row) is unchanged.
    """
    from diffusers.models.embeddings import LabelEmbedding

    for module in model.modules():
        if isinstance(module, LabelEmbedding):
            module.dropout_prob = prob


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).is_file() for f in _WEIGHT_FILES)


def load_embedded(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiTTransformer2DModel:
    """Load the shipped Fashion-MNIST DiT from ``aselect_kernels/embedded/assets/model`` in eval mode.

    Its input contract: clean images ``[B, 1, 28, 28]`` in :data:`INPUT_RANGE` (``[-1, 1]``; uint8 pixels map there
    with :func:`aselect_kernels.images.to_model_range`), class labels 0..9 or none (the null class 10).
    """
    if not _has_weights(EMBEDDED_DIR):
        raise FileNotFoundError(
            f"embedded model weights not found in {EMBEDDED_DIR} (expected config.json and "
            f"{_WEIGHT_FILES[0]}); reinstall the package or retrain with "
            f"aselect_kernels.embedded.train.train('{EMBEDDED_DIR}')"
        )
    from diffusers import DiTTransformer2DModel

    model = DiTTransformer2DModel.from_pretrained(str(EMBEDDED_DIR), torch_dtype=dtype, **pretrained_kwargs())
    setattr(model, INPUT_RANGE_ATTR, INPUT_RANGE)  # selection warns about inputs visibly outside it
    return model.to(device).eval()
