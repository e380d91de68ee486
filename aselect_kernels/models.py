"""Model loading: the embedded model, any diffusers DiT from a ``save_pretrained`` folder, or a hub id."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .hub import HUB_ID, hub_offline, pretrained_kwargs


def model_class(name: str) -> type:
    """The diffusers model class ``name`` (a ``_class_name`` of a ``config.json``)."""
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"config.json names model class {name!r}, which this diffusers version does not provide")
    return cls


def _read_config(cfg_path: Path, folder: Path) -> dict:
    """A model folder's ``config.json`` as a dict; a broken one raises ``ValueError`` naming the file and folder."""
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{cfg_path}: broken config.json of the model folder {folder} (not valid JSON: {exc.msg} "
                         f"at line {exc.lineno}, column {exc.colno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"{cfg_path}: unreadable config.json of the model folder {folder} ({exc})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path}: the config.json of the model folder {folder} holds a JSON "
                         f"{type(cfg).__name__}, not an object of settings")
    return cfg


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
        from .embedded.model import load_embedded

        return load_embedded(device=device, dtype=dtype)
    folder = Path(path_or_id).expanduser()
    if folder.exists():
        root = folder / subfolder if subfolder else folder
        if not (root / "config.json").is_file() and (root / "transformer" / "config.json").is_file():
            root = root / "transformer"
        cfg_path = root / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no config.json in {root}: not a diffusers model folder")
        name = _read_config(cfg_path, root).get("_class_name")
        if not name:
            raise ValueError(f"{cfg_path} has no _class_name; cannot tell which diffusers model class to use")
        model = model_class(name).from_pretrained(str(root), torch_dtype=dtype, **pretrained_kwargs())
        return model.to(device).eval()
    if not HUB_ID.match(path_or_id):
        raise FileNotFoundError(f"model folder not found: {folder} (and {path_or_id!r} is not a hub id owner/name)")
    offline = hub_offline()
    try:
        from diffusers import AutoModel

        kwargs: dict[str, Any] = {"torch_dtype": dtype, "subfolder": subfolder or "transformer", **pretrained_kwargs()}
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
