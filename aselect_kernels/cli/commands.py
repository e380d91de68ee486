"""The commands: ``demo`` and ``select`` score, ``probe`` fits the exhaustive grid, ``validate`` compares the two,
``train`` trains the embedded model.  Each checks what it can before the model loads."""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from ..constants import DEFAULT_TAPS, LABEL_CRITERIA, NOISE_TIMESTEPS, PERTURBED_DATASETS, VALIDATION_TIMESTEPS
from ..outputs import staged_output
from .checks import (
    WIDTH,
    CliError,
    check_cost,
    check_image_count,
    check_labels,
    check_out,
    check_selection_args,
    check_timesteps,
    is_main,
    model_dtype,
    resolve_device,
)
from .vae import encode, vae_path

#: The demo's pick with its default arguments, as the README states it (the demo says whether its run agrees).
DEMO_PICK = (0, "transformer_blocks.0.ff.net.0")


def _run_selection(args: argparse.Namespace, out: Path, model: Any, images: Any, labels: Any,
                   select_labels: Any = None) -> Any:
    from ..conditioning import Conditioning
    from ..reference import StatsConfig
    from ..result import plural, short_tap
    from ..select import select_timestep

    budget = int(args.memory_budget_mb * 2**20) if args.memory_budget_mb is not None else None
    if args.recipe:  # only what was given: the recipe sets the rest
        chosen = {"recipe": args.recipe, **({"taps": _taps(args.taps)} if args.taps is not None else {})}
    else:
        chosen = {"taps": _taps(args.taps), "scorer": args.scorer, "direction": args.direction, "noise": args.noise,
                  "config": StatsConfig(cutoff=args.cutoff, hfr_dims=args.hfr_dims)}
    start = time.perf_counter()
    result = select_timestep(
        model, images, timesteps=args.timesteps, conditioning=Conditioning(class_labels=labels),
        backend=args.backend, seed=args.seed, chunk_size=args.chunk_size, memory_budget=budget,
        progress=not args.no_progress, labels=select_labels, **chosen,
    )
    wall = time.perf_counter() - start
    result.meta["command_wall_s"] = round(wall, 3)
    table = result.table()
    per_tap = ", ".join(f"{short_tap(k)}={v}" for k, v in result.best_t_per_tap().items())
    t, tap = result.best()
    meta = result.meta
    if not is_main():
        return None
    with staged_output(out) as stage:
        result.to_json(stage / "result.json")
        result.plot(stage / "scores.png")
    print(table)
    print(textwrap.fill(f"best t per tap: {per_tap}", WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    paper = meta.get("paper_timesteps")
    in_paper = f"; paper t = {paper[result.timesteps.index(t)]}" if paper else ""
    print(f"chosen (t, tap) = ({t}, {tap}) by {result.primary} ({result.directions[result.primary]}){in_paper}")
    if meta.get("recipe"):
        r = meta["recipe"]
        shift = f", shift {r['flow_shift']:g}" if r["flow_shift"] is not None else ""
        print(f"recipe {r['name']}: {r['scorer']} ({r['direction']}) on {r['taps']} taps, cutoff {r['paper_cutoff']} "
              f"in {r['cutoff_units']} units ({r['cutoff']:g} of Nyquist), 1-D token order, {r['noise']} noise"
              f"{shift} ({r['shift_source']})")
    draws = " x 2 noise draws" if meta.get("pair_scorers") else ""
    ranks = meta.get("world_size", 1)
    chunks = (f"on {ranks} ranks, rank 0 in {plural(meta['chunks'], 'chunk')} of {meta['chunk_size']}" if ranks > 1
              else f"in {plural(meta['chunks'], 'chunk')} of {meta['chunk_size']}")
    print(f"scored {plural(meta['samples'], 'sample')} ({plural(images.shape[0], 'image')} x "
          f"{plural(len(result.timesteps), 'timestep')}{draws}) x {plural(len(result.taps), 'tap')} {chunks}; "
          f"wall time {wall:.1f} s on {meta['device']}")
    print(f"wrote result.json and scores.png in {out}")
    return result


_SELECTION_FILES = ("result.json", "scores.png")


def cmd_demo(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    out = check_out(args.out, _SELECTION_FILES)
    from ..embedded.data import load_embedded_images
    from ..images import to_model_range
    from ..result import plural

    images, _ = load_embedded_images("test")
    if args.images > len(images):
        raise CliError(f"--images must be in [1, {len(images)}] (the shipped test images), got {args.images}")
    device = resolve_device(args.device)
    check_selection_args(args)
    check_image_count(args, args.images)
    check_cost(args, args.images)
    from ..embedded.model import load_embedded

    model = load_embedded(device=device, dtype=model_dtype(args.dtype))
    x = to_model_range(images[: args.images]).to(device)
    if x.dim() == 3:
        x = x[:, None]
    print(f"embedded DiT ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
          f"{plural(args.images, 'Fashion-MNIST test image')}, timesteps {args.timesteps}, "
          f"taps {args.taps or 'of the recipe'}, unconditional")
    result = _run_selection(args, out, model, x, None)
    print(f"demo wall time {time.perf_counter() - start:.1f} s")
    if result is not None and _demo_defaults(args):
        pick = tuple(result.best())
        print("the README's example pick, as documented" if pick == DEMO_PICK else
              f"note: the README documents the pick {DEMO_PICK}; this run chose {pick}")


def _demo_defaults(args: argparse.Namespace) -> bool:
    """Whether the demo ran with the selection arguments the README's example uses (the parser's defaults; an
    option left unset takes its library default, :data:`~aselect_kernels.constants.RECIPE_OPTIONS`)."""
    from ..constants import RECIPE_OPTIONS

    return all(getattr(args, k) == (RECIPE_OPTIONS.get(k) if v is None else v) for k, v in args.demo_defaults.items())


def _labelled_draw(args: argparse.Namespace) -> tuple[Any, Any]:
    """``--labels``: the labelled images of ``--images`` (.npz with labels, or a folder per class), ``--per-class``
    of each class drawn with ``--seed`` (all of a smaller class; 0: all)."""
    from ..fewlabel import draw_per_class
    from ..images import load_labelled

    try:
        data = load_labelled(args.images)
    except ValueError as exc:
        raise CliError(f"--labels: {exc}") from None
    if args.per_class:
        idx = draw_per_class(data.labels.numpy(), args.per_class, args.seed)
        return data.images[idx], data.labels[idx]
    return data.images, data.labels


def cmd_select(args: argparse.Namespace) -> None:
    out = check_out(args.out, _SELECTION_FILES)
    from ..images import load_images
    from ..result import plural

    if args.scorer in LABEL_CRITERIA and not args.labels:
        raise CliError(f"--scorer {args.scorer} is a few-label criterion: it needs --labels")
    images, labels = _labelled_draw(args) if args.labels else load_images(args.images, layout=args.layout)
    if args.limit is not None:
        if args.limit > images.shape[0]:
            raise CliError(f"--limit {args.limit} exceeds the {plural(images.shape[0], 'image')} in {args.images}")
        images = images[: args.limit]
        labels = labels[: args.limit] if labels is not None else None
    if args.use_labels and labels is None:
        raise CliError(f"--use-labels given but {args.images} has no labels")
    device = resolve_device(args.device)
    check_selection_args(args)  # imports diffusers' schedulers: after the quick checks
    check_image_count(args, images.shape[0])
    check_cost(args, images.shape[0])
    vae = vae_path(args)
    from ..geometry import check_model_inputs
    from ..models import load_model

    model = load_model(args.model, device=device, dtype=model_dtype(args.dtype))
    cfg = getattr(model, "config", None)
    want_c = getattr(cfg, "in_channels", None)
    if vae is not None and (args.vae != "auto" or (want_c is not None and images.shape[1] != want_c)):
        images = encode(vae, images, device, model_dtype(args.dtype))
    if want_c is not None and images.shape[1] != want_c:
        raise CliError(f"the model takes {want_c}-channel inputs but the images have {images.shape[1]} channels "
                       "(a latent model needs latents: give --vae with its AutoencoderKL folder, or pass latents "
                       "as an .npy of shape [N, C, H, W])")
    check_model_inputs(model, images)
    use_labels = None
    if args.use_labels:
        check_labels(model, labels)
        use_labels = labels.to(device)
    if args.labels:
        from ..fewlabel import check_labels as check_few_labels

        try:
            check_few_labels(labels, images.shape[0])
        except ValueError as exc:
            raise CliError(f"--labels: {exc}") from None
    _run_selection(args, out, model, images.to(device), use_labels, labels if args.labels else None)


def cmd_train(args: argparse.Namespace) -> None:
    out = check_out(args.out)
    if args.init_from and out.resolve() == Path(args.init_from).expanduser().resolve():
        raise CliError(f"--out and --init-from are both {args.init_from}: write the continued run to a new folder")
    from .. import distributed
    from ..embedded.train import train

    if distributed.active():
        raise CliError("aselect train runs in one process: launch it without torchrun")

    with staged_output(out, keep_on_error=("checkpoint",)) as stage:
        summary = train(stage, minutes=args.minutes or None, max_steps=args.max_steps, seed=args.seed,
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
    noisy = args.dataset in PERTURBED_DATASETS
    if args.timesteps is None:  # the dataset's default grid ("" stays an error)
        args.timesteps = NOISE_TIMESTEPS if noisy else VALIDATION_TIMESTEPS
    check_timesteps(args.timesteps, args.noise)


def _labelled_data(args: argparse.Namespace, device: Any) -> dict:
    """The labelled images of a shipped dataset or of --images/--test-images, as keyword arguments of
    :func:`~aselect_kernels.validation.run.validation_parts` (masks of a shipped dataset: its foreground targets; the
    noisy datasets have none)."""
    from ..images import to_model_range
    from ..validation.datasets import load_dataset
    from ..validation.probe import dense_target

    if args.images:
        from ..images import load_labelled

        train = load_labelled(args.images, layout=args.layout)
        test = load_labelled(args.test_images, layout=args.layout) if args.test_images else None
        return {"images": train.images, "labels": train.labels, "masks": train.masks,
                "test_images": test.images if test else None, "test_labels": test.labels if test else None,
                "test_masks": test.masks if test else None, "n_train": args.n_train, "n_test": args.n_test,
                "name": _data_name(args)}
    dataset = _data_name(args)
    (utr, ytr), (ute, yte), _ = load_dataset(dataset, args.n_train, args.n_test, args.seed)
    noisy = dataset in PERTURBED_DATASETS
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
    out = check_out(args.out, ("probe.json",))
    _check_validation_args(args)
    device = resolve_device(args.device)
    data = _labelled_data(args, device)  # bad files fail here, before the model loads
    import torch

    from ..conditioning import Conditioning
    from ..models import load_model
    from ..result import plural
    from ..validation.grids import probe_grid
    from ..validation.splits import prepare_splits

    model = load_model(args.model, device=device, dtype=model_dtype(args.dtype))
    train, test, classes, _ = prepare_splits(
        model, data["images"], data["labels"], data["test_images"], data["test_labels"],
        test_fraction=args.test_fraction, seed=args.seed, n_train=data.get("n_train"), n_test=data.get("n_test"))
    cond = None
    if args.use_labels:
        given = torch.cat([train.given, test.given])
        check_labels(model, given)
        cond = Conditioning(class_labels=given.to(device))
    grid = probe_grid(model, (train.x, train.y), (test.x, test.y), args.timesteps, _taps(args.taps), len(classes),
                      noise=args.noise, conditioning=cond, seed=args.seed, progress=not args.no_progress,
                      **_fit_options(args))
    if not is_main():
        return
    from .. import distributed

    best = divmod(int(grid.metric.argmax()), len(grid.taps))
    print(f"{data['name']}: {plural(len(train.y), 'train image')} / {plural(len(test.y), 'test image')}, "
          f"{len(classes)} class{'' if len(classes) == 1 else 'es'}")
    print(f"raw-pixel probe: {100 * grid.floor:.2f}%")
    for p, tap in enumerate(grid.taps):
        ti = int(grid.metric[:, p].argmax())
        print(f"{tap:<40} best t {grid.timesteps[ti]:>4}  accuracy {100 * grid.metric[ti, p]:.2f}%")
    print(f"grid best: t={grid.timesteps[best[0]]}, {grid.taps[best[1]]}: {100 * grid.metric.max():.2f}% "
          f"({grid.forward_samples} forward samples, {grid.wall_s:.1f} s)")
    with staged_output(out) as stage:
        (stage / "probe.json").write_text(json.dumps({"dataset": data["name"], "n_train": len(train.y),
                                                    "n_test": len(test.y), "classes": classes, **grid.to_dict(),
                                                    "world_size": distributed.world_size()}, indent=1))
    print(f"wrote {out / 'probe.json'}")


def cmd_validate(args: argparse.Namespace) -> None:
    name = _data_name(args)
    names = [f"{stem}_{name}{ext}" for stem, ext in (("validation", ".json"), ("selection", ".json"),
                                                      ("validation", ".md"), ("validation", ".png"),
                                                      ("validation", "_dense.png"))]
    out = check_out(args.out, names)
    _check_validation_args(args)
    start = time.perf_counter()
    device = resolve_device(args.device)
    data = _labelled_data(args, device)  # bad files fail here, before the model loads
    dense = not args.no_dense and name not in PERTURBED_DATASETS
    if data["test_labels"] is not None:  # both splits known: their sizes are checked now
        n_train = min(len(data["labels"]), data.get("n_train") or len(data["labels"]))
        n_test = min(len(data["test_labels"]), data.get("n_test") or len(data["test_labels"]))
        if args.n_select is not None and args.n_select > n_train:
            raise CliError(f"--n-select {args.n_select} exceeds the {n_train} training images (selection uses them)")
        if dense and not args.images and (args.n_dense_train > n_train or args.n_dense_test > n_test):
            raise CliError(f"the dense probe takes its images from the probe's: --n-dense-train {args.n_dense_train} "
                           f"and --n-dense-test {args.n_dense_test} must not exceed {n_train} and {n_test}")
    from ..models import load_model
    from ..validation.report import plot_validation, report_markdown, summary_lines
    from ..validation.run import validation_parts

    model = load_model(args.model, device=device, dtype=model_dtype(args.dtype))
    report, selection, grid, dgrid = validation_parts(
        model, **data, n_select=args.n_select, timesteps=args.timesteps, taps=_taps(args.taps), noise=args.noise,
        use_labels=args.use_labels, test_fraction=args.test_fraction,
        dense=dense, n_dense_train=args.n_dense_train,
        n_dense_test=args.n_dense_test, candidates=args.candidates, seed=args.seed, progress=not args.no_progress,
        **_fit_options(args),
    )
    report["wall_s"] = round(time.perf_counter() - start, 1)
    if not is_main():
        return
    with staged_output(out) as stage:
        (stage / names[0]).write_text(json.dumps(report, indent=1))
        selection.to_json(stage / names[1])
        (stage / names[2]).write_text(report_markdown(report) + "\n")
        plot_validation(selection, grid, str(stage / names[3]))
        if dgrid is not None:
            plot_validation(selection, dgrid, str(stage / names[4]))
    print("\n".join(summary_lines(report)))
    if "dense_note" in report:
        print(report["dense_note"] + " (give integer pixel labels as 'masks' in an .npz)")
    extra = report["cost"]["candidates_wall_s"]
    note = f" ({extra:.1f} s of it the untimed candidate pass)" if args.candidates else ""
    print(f"validate wall time {report['wall_s']:.1f} s{note}; wrote {out}/validation_{name}.json, .md, .png")


def cmd_taps(args: argparse.Namespace) -> None:
    from ..models import load_model
    from ..result import plural
    from ..taps import model_family, num_blocks
    from .tapinfo import list_taps, taps_table

    model = load_model(args.model, device=resolve_device(args.device))
    rows, why = list_taps(model)
    print(f"{args.model}: {type(model).__name__} ({model_family(model)} presets), {plural(num_blocks(model), 'block')}"
          f", {plural(len(rows), 'tap')}; shapes from one forward of one sample")
    print("\n".join(taps_table(rows)))
    if why:
        print(f"shapes unknown: {why}")
    print(f"a preset takes ':i,j' to keep blocks i and j (e.g. {DEFAULT_TAPS}:0); the default is {DEFAULT_TAPS}")
