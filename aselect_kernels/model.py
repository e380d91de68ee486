"""The embedded default model: a small class-conditional pixel-space DiT for Fashion-MNIST, and model loading.

The embedded model is a diffusers :class:`~diffusers.DiTTransformer2DModel` on 1 x 28 x 28 images with 2 x 2
patches (a 14 x 14 grid, 196 tokens) that predicts the DDPM noise epsilon.  It is conditioned on the 10
Fashion-MNIST classes; diffusers' ``LabelEmbedding`` (built with ``class_dropout_prob=0.1 > 0``) appends one
extra row to each class table, index ``num_embeds_ada_norm`` = :data:`NULL_CLASS`, the unconditional class.
"""

from __future__ import annotations

import json
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from diffusers import DiTTransformer2DModel

from .forward import INPUT_RANGE_ATTR

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
#: ``name`` or ``owner/name``: what a Hugging Face hub id looks like (anything else must be a local folder).
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _load_kwargs() -> dict[str, Any]:
    """``from_pretrained`` options: low-memory loading only where ``accelerate`` provides it (diffusers otherwise
    warns on every load, then falls back to the same plain loading)."""
    from diffusers.utils import is_accelerate_available

    return {"low_cpu_mem_usage": is_accelerate_available()}


def hub_offline(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub is out of reach: ``HF_HUB_OFFLINE`` is set, or its endpoint (``HF_ENDPOINT``)
    refuses a TCP connection within ``timeout`` seconds.  Behind a proxy the hub is assumed reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return False
    url = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "", url.port or (80 if url.scheme == "http" else 443)),
                                      timeout=timeout):
            return False
    except OSError:
        return True


def build_model(config: dict[str, Any] | None = None) -> DiTTransformer2DModel:
    """Build a freshly initialised DiT from ``EMBEDDED_CONFIG`` updated with ``config``."""
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
    """Load the shipped Fashion-MNIST DiT from ``aselect_kernels/assets/model`` in eval mode.

    Its input contract: clean images ``[B, 1, 28, 28]`` in :data:`INPUT_RANGE` (``[-1, 1]``; uint8 pixels map there
    with :func:`aselect_kernels.data.to_model_range`), class labels 0..9 or none (the null class 10).
    """
    if not _has_weights(EMBEDDED_DIR):
        raise FileNotFoundError(
            f"embedded model weights not found in {EMBEDDED_DIR} (expected config.json and "
            f"{_WEIGHT_FILES[0]}); reinstall the package or retrain with "
            f"aselect_kernels.train.train('{EMBEDDED_DIR}')"
        )
    model = DiTTransformer2DModel.from_pretrained(str(EMBEDDED_DIR), torch_dtype=dtype, **_load_kwargs())
    setattr(model, INPUT_RANGE_ATTR, INPUT_RANGE)  # selection warns about inputs visibly outside it
    return model.to(device).eval()


def _model_class(name: str) -> type:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"config.json names model class {name!r}, which this diffusers version does not provide")
    return cls


def load_model(
    path_or_id: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    subfolder: str | None = None,
) -> torch.nn.Module:
    """Load a diffusion transformer: ``"embedded"``, a local ``save_pretrained`` folder, or a hub id.

    For a local folder (or a pipeline folder with ``subfolder="transformer"``) the class is taken from
    ``_class_name`` in its ``config.json`` (e.g. DiTTransformer2DModel, PixArtTransformer2DModel,
    SD3Transformer2DModel, FluxTransformer2DModel).  Hub ids need network access, or the model in the local hub
    cache: when the hub is out of reach (:func:`hub_offline`) only the cache is tried, so that loading fails at once.
    """
    if path_or_id == "embedded":
        return load_embedded(device=device, dtype=dtype)
    folder = Path(path_or_id).expanduser()
    if folder.exists():
        root = folder / subfolder if subfolder else folder
        if not (root / "config.json").is_file() and (root / "transformer" / "config.json").is_file():
            root = root / "transformer"
        cfg_path = root / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no config.json in {root}: not a diffusers model folder")
        name = json.loads(cfg_path.read_text(encoding="utf-8")).get("_class_name")
        if not name:
            raise ValueError(f"{cfg_path} has no _class_name; cannot tell which diffusers model class to use")
        model = _model_class(name).from_pretrained(str(root), torch_dtype=dtype, **_load_kwargs())
        return model.to(device).eval()
    if not _HUB_ID.match(path_or_id):
        raise FileNotFoundError(f"model folder not found: {folder} (and {path_or_id!r} is not a hub id owner/name)")
    offline = hub_offline()
    try:
        from diffusers import AutoModel

        kwargs: dict[str, Any] = {"torch_dtype": dtype, "subfolder": subfolder or "transformer", **_load_kwargs()}
        if offline:
            kwargs["local_files_only"] = True
        with warnings.catch_warnings():  # diffusers passes a deprecated argument to huggingface_hub
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            try:
                model = AutoModel.from_pretrained(path_or_id, **kwargs)
            except Exception:
                if subfolder:
                    raise
                kwargs.pop("subfolder")
                model = AutoModel.from_pretrained(path_or_id, **kwargs)
    except Exception as exc:
        why = ("the Hugging Face hub is out of reach (offline) and the model is not in the local hub cache"
               if offline else f"loading it from the Hugging Face hub failed: {exc}")
        raise RuntimeError(f"could not load {path_or_id!r}: it is neither 'embedded' nor an existing folder, and "
                           f"{why}") from exc
    return model.to(device).eval()
