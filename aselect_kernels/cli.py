"""The ``aselect`` command line: ``demo`` (the main job), ``select``, ``train``.

Bad arguments end with one line ``aselect: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .reference import StatsConfig
from .scorers import DEFAULT_SCORER, list_scorers

DEMO_IMAGES = 64
DEMO_TIMESTEPS = "0:1000:50"


class CliError(Exception):
    """A user error reported as one line."""


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"device {name!r} requested but CUDA is not available")
    return dev


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _selection_args(p: argparse.ArgumentParser, default_taps: str) -> None:
    p.add_argument("--timesteps", default=DEMO_TIMESTEPS, help="start:stop:step (stop exclusive) or a comma list")
    p.add_argument("--taps", default=default_taps,
                   help="preset (query, attn_out, mlp_out, block_out, all, attn_mlp; ':9' picks blocks) "
                        "or comma-separated module paths")
    p.add_argument("--scorer", default=DEFAULT_SCORER, choices=[s.name for s in list_scorers()])
    p.add_argument("--direction", choices=("max", "min"), help="override the scorer's selection direction")
    p.add_argument("--noise", default="ddpm", choices=("ddpm", "flow"))
    p.add_argument("--cutoff", type=float, default=0.15, help="hfr cutoff, fraction of Nyquist")
    p.add_argument("--hfr-dims", type=int, default=1, choices=(1, 2), help="DFT along tokens (1) or the grid (2)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "torch"))
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES))
    p.add_argument("--chunk-size", type=int, help="samples per forward (default: from the memory budget)")
    p.add_argument("--memory-budget-mb", type=float, help="memory a chunk may use")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="aselect_out", help="folder for result.json and scores.png")
    p.add_argument("--no-progress", action="store_true")


def _run_selection(args: argparse.Namespace, model: torch.nn.Module, images: torch.Tensor,
                   labels: torch.Tensor | None) -> None:
    from .forward import Conditioning
    from .select import select_timestep

    taps = args.taps.split(",") if "," in args.taps and "." in args.taps else args.taps
    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None
    start = time.perf_counter()
    result = select_timestep(
        model, images, timesteps=args.timesteps, taps=taps, scorer=args.scorer, direction=args.direction,
        noise=args.noise, conditioning=Conditioning(class_labels=labels),
        config=StatsConfig(cutoff=args.cutoff, hfr_dims=args.hfr_dims), backend=args.backend, seed=args.seed,
        chunk_size=args.chunk_size, memory_budget=budget, progress=not args.no_progress,
    )
    wall = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.meta["command_wall_s"] = round(wall, 3)
    result.to_json(out / "result.json")
    result.plot(out / "scores.png")
    print(result.table())
    print("best t per tap:", ", ".join(f"{k}={v}" for k, v in result.best_t_per_tap().items()))
    t, tap = result.best()
    print(f"chosen (t, tap) = ({t}, {tap}) by {result.primary} ({result.directions[result.primary]})")
    print(f"scored {result.meta['samples']} samples ({images.shape[0]} images x {len(result.timesteps)} timesteps) "
          f"x {len(result.taps)} taps in {result.meta['chunks']} chunks of {result.meta['chunk_size']}; "
          f"wall time {wall:.1f} s on {result.meta['device']}")
    print(f"wrote {out / 'result.json'} and {out / 'scores.png'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .data import load_embedded_images, to_model_range
    from .model import load_embedded

    start = time.perf_counter()
    device = _device(args.device)
    model = load_embedded(device=device, dtype=_DTYPES[args.dtype])
    images, _ = load_embedded_images("test")
    if not 1 <= args.images <= len(images):
        raise CliError(f"--images must be in [1, {len(images)}], got {args.images}")
    x = to_model_range(images[: args.images]).to(device)
    if x.dim() == 3:
        x = x[:, None]
    print(f"embedded DiT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
          f"{args.images} Fashion-MNIST test images, timesteps {args.timesteps}, taps {args.taps}, unconditional")
    _run_selection(args, model, x, None)
    print(f"demo wall time {time.perf_counter() - start:.1f} s")


def cmd_select(args: argparse.Namespace) -> None:
    from .data import load_images
    from .model import load_model

    device = _device(args.device)
    model = load_model(args.model, device=device, dtype=_DTYPES[args.dtype])
    images, labels = load_images(args.images)
    if args.limit:
        images = images[: args.limit]
        labels = labels[: args.limit] if labels is not None else None
    cfg = getattr(model, "config", None)
    want_c, want_s = getattr(cfg, "in_channels", None), getattr(cfg, "sample_size", None)
    if want_c is not None and images.shape[1] != want_c:
        raise CliError(f"the model takes {want_c}-channel inputs but the images have {images.shape[1]} channels "
                       "(latent models need latents: pass them as an .npy of shape [N, C, H, W])")
    if want_s is not None and tuple(images.shape[2:]) != (want_s, want_s):
        raise CliError(f"the model takes {want_s}x{want_s} inputs but the images are "
                       f"{images.shape[2]}x{images.shape[3]}")
    use_labels = labels if args.use_labels else None
    if args.use_labels and labels is None:
        raise CliError("--use-labels given but the image file has no labels")
    _run_selection(args, model, images.to(device), use_labels.to(device) if use_labels is not None else None)


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    summary = train(args.out, minutes=args.minutes, max_steps=args.max_steps, seed=args.seed, device=args.device)
    print({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aselect", description="Automatic timestep selection for DiT features")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="score the embedded DiT on shipped Fashion-MNIST images (offline)")
    _selection_args(demo, "all")
    demo.add_argument("--images", type=int, default=DEMO_IMAGES, help="number of test images")
    demo.set_defaults(func=cmd_demo, out="aselect_demo")

    sel = sub.add_parser("select", help="select (t, tap) for your model and images")
    sel.add_argument("--model", required=True, help="'embedded', a diffusers save_pretrained folder, or a hub id")
    sel.add_argument("--images", required=True, help=".npz / .npy file or a folder of PNG/JPEG")
    sel.add_argument("--limit", type=int, help="use only the first N images")
    sel.add_argument("--use-labels", action="store_true", help="condition on the file's labels (default: null)")
    _selection_args(sel, "query")
    sel.set_defaults(func=cmd_select)

    tr = sub.add_parser("train", help="train the embedded Fashion-MNIST DiT")
    tr.add_argument("--out", required=True)
    tr.add_argument("--minutes", type=float, default=40.0)
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CliError, ValueError, TypeError, FileNotFoundError, RuntimeError, KeyError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"aselect: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
