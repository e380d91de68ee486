"""The ``aselect`` command line: ``demo`` (the main job), ``select``, ``probe``, ``validate``, ``train``.

Bad arguments end with one line ``aselect: error: ...`` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

from .reference import StatsConfig
from .scorers import DEFAULT_SCORER, list_scorers
from .stats import BACKENDS
from .taps import DEFAULT_TAPS
from .validate import DEFAULT_TEST_FRACTION, VALIDATION_TIMESTEPS

DEMO_IMAGES = 64
DEMO_TIMESTEPS = "0:1000:50"


class CliError(Exception):
    """A user error reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (``aselect: error: ...``, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"aselect: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"device {name!r} requested but CUDA is not available")
    return dev


_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _selection_args(p: argparse.ArgumentParser, default_taps: str) -> None:
    p.add_argument("--timesteps", default=DEMO_TIMESTEPS,
                   help="comma list of ints and start:stop:step ranges (stop exclusive), e.g. 0,10,25,50:1000:50")
    p.add_argument("--taps", default=default_taps,
                   help="preset (query, attn_out, mlp_hidden, mlp_out, block_out, all, attn_mlp; ':9' picks blocks) "
                        "or comma-separated module paths")
    p.add_argument("--scorer", default=DEFAULT_SCORER, choices=[s.name for s in list_scorers()])
    p.add_argument("--direction", choices=("max", "min"), help="override the scorer's selection direction")
    p.add_argument("--noise", default="ddpm", choices=("ddpm", "flow"))
    p.add_argument("--cutoff", type=float, default=0.15, help="hfr cutoff, fraction of Nyquist")
    p.add_argument("--hfr-dims", type=int, default=1, choices=(1, 2), help="DFT along tokens (1) or the grid (2)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="stats backend: auto (kernel on CUDA, matmul on CPU), triton, matmul, torch (reference)")
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

    summary = train(args.out, minutes=args.minutes or None, max_steps=args.max_steps, seed=args.seed,
                    device=args.device, batch_size=args.batch_size, lr=args.lr, num_threads=args.num_threads,
                    init_from=args.init_from, checkpoint_minutes=args.checkpoint_minutes,
                    command="aselect " + " ".join(sys.argv[1:]))
    print(f"trained {summary['steps']} steps in {summary['train_wall_s']:.0f} s on {summary['hardware']}; "
          f"wrote {args.out} (model card: {Path(args.out) / 'MODEL_CARD.md'})")


def _validation_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded', a diffusers save_pretrained folder, or a hub id (as for select)")
    p.add_argument("--dataset", choices=("fashion", "digits"),
                   help="a shipped dataset on the embedded model's 28x28 inputs (default: fashion, unless --images)")
    p.add_argument("--images", help="your labelled images: an .npz with 'images' and 'labels' (optional 'masks', "
                                    "integer pixel labels for the dense probe), or a folder of one subfolder per "
                                    "class")
    p.add_argument("--test-images", help="a separate labelled test set in the same forms (default: a seeded "
                                         "stratified split of --images)")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help="share of each class held out for testing when there is no --test-images")
    p.add_argument("--n-train", type=int, default=None,
                   help="labeled images the probes train on (default: 1000 for a shipped dataset, all of --images)")
    p.add_argument("--n-test", type=int, default=None,
                   help="labeled images the probes are scored on (default: 1000 for fashion, 797 for digits, all "
                        "of the test split)")
    p.add_argument("--timesteps", default=VALIDATION_TIMESTEPS,
                   help="comma list of ints and start:stop:step ranges (stop exclusive)")
    p.add_argument("--taps", default="all", help="as for select: a preset or comma-separated module paths")
    p.add_argument("--noise", default="ddpm", choices=("ddpm", "flow"))
    p.add_argument("--use-labels", action="store_true",
                   help="condition the model on each image's label (the probes then see it too; default: null)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="fp32", choices=sorted(_DTYPES))
    p.add_argument("--one-at-a-time", action="store_true",
                   help="fit the probes one after another (the reference path) instead of batched")
    p.add_argument("--memory-budget-mb", type=float, default=None,
                   help="memory one batch of probe fits may use (default 1024 on the CPU, up to 8192 on a GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _check_validation_args(args: argparse.Namespace) -> None:
    """Argument errors found before loading anything."""
    if args.images and args.dataset:
        raise CliError("give either --dataset or --images, not both")
    if args.test_images and not args.images:
        raise CliError("--test-images needs --images")
    for name in ("images", "test_images"):
        path = getattr(args, name)
        if path and not Path(path).expanduser().exists():
            raise CliError(f"--{name.replace('_', '-')} not found: {path}")
    for name in ("n_train", "n_test", "n_select"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if not 0.0 < args.test_fraction < 1.0:
        raise CliError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    if args.memory_budget_mb is not None and args.memory_budget_mb <= 0:
        raise CliError(f"--memory-budget-mb must be positive, got {args.memory_budget_mb}")
    from .noise import parse_timesteps

    parse_timesteps(args.timesteps)


def _labelled_data(args: argparse.Namespace, device: torch.device) -> dict:
    """The labelled images of a shipped dataset or of --images/--test-images, as keyword arguments of
    :func:`~aselect_kernels.validate.validation_parts` (masks of a shipped dataset: its foreground targets)."""
    from .probe import dense_target
    from .validate import _model_input, load_dataset

    if args.images:
        from .data import load_labelled

        train = load_labelled(args.images)
        test = load_labelled(args.test_images) if args.test_images else None
        return {"images": train.images, "labels": train.labels, "masks": train.masks,
                "test_images": test.images if test else None, "test_labels": test.labels if test else None,
                "test_masks": test.masks if test else None, "n_train": args.n_train, "n_test": args.n_test,
                "name": re.sub(r"[^A-Za-z0-9_.-]", "_", Path(args.images).expanduser().stem) or "user"}
    dataset = args.dataset or "fashion"
    (utr, ytr), (ute, yte), _ = load_dataset(dataset, args.n_train or 1000, args.n_test, args.seed)
    return {"images": _model_input(utr, device), "labels": ytr, "masks": dense_target(utr, ytr),
            "test_images": _model_input(ute, device), "test_labels": yte, "test_masks": dense_target(ute, yte),
            "name": dataset}


def _taps(spec: str) -> str | list[str]:
    """A preset stays a string; comma-separated module paths become a list."""
    return spec.split(",") if "," in spec and "." in spec else spec


def _fit_options(args: argparse.Namespace) -> dict:
    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None
    return {"batched": not args.one_at_a_time, "memory_budget": budget}


def cmd_probe(args: argparse.Namespace) -> None:
    import json

    from .forward import Conditioning
    from .model import load_model
    from .validate import _noiser_check, prepare_splits, probe_grid

    _check_validation_args(args)
    device = _device(args.device)
    model = load_model(args.model, device=device, dtype=_DTYPES[args.dtype])
    data = _labelled_data(args, device)
    train, test, classes, _ = prepare_splits(
        model, data["images"], data["labels"], data["test_images"], data["test_labels"],
        test_fraction=args.test_fraction, seed=args.seed, n_train=data.get("n_train"), n_test=data.get("n_test"))
    _noiser_check(args.noise, args.timesteps)
    cond = Conditioning(class_labels=torch.cat([train.given, test.given]).to(device)) if args.use_labels else None
    grid = probe_grid(model, (train.x, train.y), (test.x, test.y), args.timesteps, _taps(args.taps), len(classes),
                      noise=args.noise, conditioning=cond, seed=args.seed, progress=not args.no_progress,
                      **_fit_options(args))
    best = divmod(int(grid.metric.argmax()), len(grid.taps))
    print(f"{data['name']}: {len(train.y)} train / {len(test.y)} test images, {len(classes)} classes")
    print(f"raw-pixel probe: {100 * grid.floor:.2f}%")
    for p, tap in enumerate(grid.taps):
        ti = int(grid.metric[:, p].argmax())
        print(f"{tap:<40} best t {grid.timesteps[ti]:>4}  accuracy {100 * grid.metric[ti, p]:.2f}%")
    print(f"grid best: t={grid.timesteps[best[0]]}, {grid.taps[best[1]]}: {100 * grid.metric.max():.2f}% "
          f"({grid.forward_samples} forward samples, {grid.wall_s:.1f} s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps({"dataset": data["name"], "n_train": len(train.y),
                                                "n_test": len(test.y), "classes": classes, **grid.to_dict()},
                                               indent=1))
    print(f"wrote {out / 'probe.json'}")


def cmd_validate(args: argparse.Namespace) -> None:
    import json

    from .model import load_model
    from .validate import plot_validation, report_markdown, summary_lines, validation_parts

    _check_validation_args(args)
    start = time.perf_counter()
    device = _device(args.device)
    model = load_model(args.model, device=device, dtype=_DTYPES[args.dtype])
    data = _labelled_data(args, device)
    report, selection, grid, dgrid = validation_parts(
        model, **data, n_select=args.n_select, timesteps=args.timesteps, taps=_taps(args.taps), noise=args.noise,
        use_labels=args.use_labels, test_fraction=args.test_fraction, dense=not args.no_dense,
        n_dense_train=args.n_dense_train, n_dense_test=args.n_dense_test, candidates=args.candidates,
        seed=args.seed, progress=not args.no_progress, **_fit_options(args),
    )
    report["wall_s"] = round(time.perf_counter() - start, 1)
    name = report["dataset"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"validation_{name}.json").write_text(json.dumps(report, indent=1))
    selection.to_json(out / f"selection_{name}.json")
    (out / f"validation_{name}.md").write_text(report_markdown(report) + "\n")
    plot_validation(selection, grid, str(out / f"validation_{name}.png"))
    if dgrid is not None:
        plot_validation(selection, dgrid, str(out / f"validation_{name}_dense.png"))
    print("\n".join(summary_lines(report)))
    if "dense_note" in report:
        print(report["dense_note"] + " (give integer pixel labels as 'masks' in an .npz)")
    extra = report["cost"]["candidates_wall_s"]
    note = f" ({extra:.1f} s of it the untimed candidate pass)" if args.candidates else ""
    print(f"validate wall time {report['wall_s']:.1f} s{note}; wrote {out}/validation_{name}.json, .md, .png")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aselect", description="Automatic timestep selection for DiT features")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="score the embedded DiT on shipped Fashion-MNIST images (offline)")
    _selection_args(demo, DEFAULT_TAPS)
    demo.add_argument("--images", type=int, default=DEMO_IMAGES, help="number of test images")
    demo.set_defaults(func=cmd_demo, out="aselect_demo")

    sel = sub.add_parser("select", help="select (t, tap) for your model and images")
    sel.add_argument("--model", required=True, help="'embedded', a diffusers save_pretrained folder, or a hub id")
    sel.add_argument("--images", required=True, help=".npz / .npy file or a folder of PNG/JPEG")
    sel.add_argument("--limit", type=int, help="use only the first N images")
    sel.add_argument("--use-labels", action="store_true", help="condition on the file's labels (default: null)")
    _selection_args(sel, DEFAULT_TAPS)
    sel.set_defaults(func=cmd_select)

    pr = sub.add_parser("probe", help="exhaustive baseline: a linear probe per (t, tap) on real data")
    _validation_data_args(pr)
    pr.add_argument("--out", default="aselect_probe")
    pr.set_defaults(func=cmd_probe)

    va = sub.add_parser("validate", help="selection vs the exhaustive probe grid, with trivial rules")
    _validation_data_args(va)
    va.add_argument("--n-select", type=int, default=None,
                    help="unlabeled training images used by selection (default: 64, or all if fewer)")
    va.add_argument("--no-dense", action="store_true", help="skip the dense (segmentation) probe")
    va.add_argument("--candidates", action="store_true",
                    help="also score the candidate criteria (2-D ratios, effective rank) in an extra, untimed run")
    va.add_argument("--n-dense-train", type=int, default=100)
    va.add_argument("--n-dense-test", type=int, default=100)
    va.add_argument("--out", default="aselect_validation")
    va.set_defaults(func=cmd_validate)

    tr = sub.add_parser("train", help="train the embedded Fashion-MNIST DiT")
    tr.add_argument("--out", required=True)
    tr.add_argument("--minutes", type=float, default=40.0, help="training wall-time budget; 0 = none")
    tr.add_argument("--max-steps", type=int)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--batch-size", type=int, default=32)
    tr.add_argument("--lr", type=float, default=4e-4)
    tr.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: all cores)")
    tr.add_argument("--init-from", default=None, help="continue training from this model folder (not --out)")
    tr.add_argument("--checkpoint-minutes", type=float, default=None, help="save weights to OUT/checkpoint")
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
