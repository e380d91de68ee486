"""Train the embedded Fashion-MNIST DiT (DDPM epsilon prediction, class-conditional with label dropout).

Example::

    from aselect_kernels.embedded.train import train
    train("aselect_kernels/embedded/assets/model", minutes=40)
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..images import to_model_range
from ..models import load_model
from .card import model_card
from .data import DEFAULT_ROOT, load_embedded_images, load_fashion_mnist
from .model import NULL_CLASS, build_model, set_label_dropout

FASHION_MNIST_NOTICE = (
    "Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; https://github.com/zalandoresearch/fashion-mnist), "
    "Copyright (c) 2017 Zalando SE, released under the MIT license; see "
    "aselect_kernels/embedded/assets/FASHION_MNIST_LICENSE.txt."
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"CPU {_cpu_model()}, {os.cpu_count()} cores, torch threads: {threads}, torch {torch.__version__}"


def _load_train_data(root: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Training and held-out data: full Fashion-MNIST if installed, else the shipped subset."""
    try:
        x_tr, y_tr = load_fashion_mnist("train", root)
        x_te, y_te = load_fashion_mnist("test", root)
        source = f"Fashion-MNIST train split ({len(y_tr)} images) from {root}"
    except FileNotFoundError as exc:
        print(f"[train] {exc}\n[train] falling back to the shipped Fashion-MNIST subset", file=sys.stderr)
        x_tr, y_tr = load_embedded_images("train")
        x_te, y_te = load_embedded_images("test")
        source = f"shipped Fashion-MNIST subset ({len(y_tr)} train images; the Debian package was not found)"
    return x_tr, y_tr, x_te, y_te, source


def _eval_batch(
    x_te: np.ndarray, y_te: np.ndarray, n: int, seed: int, num_train_timesteps: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed held-out batch: test images, labels, random timesteps and noise (seeded)."""
    g = torch.Generator().manual_seed(seed + 12345)
    n = min(n, len(y_te))
    idx = torch.randperm(len(y_te), generator=g)[:n].numpy()
    x0 = to_model_range(x_te[idx])[:, None]
    y = torch.from_numpy(y_te[idx].astype(np.int64))
    t = torch.randint(0, num_train_timesteps, (n,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    return x0, y, t, noise


@torch.no_grad()
def eval_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    device: torch.device | str = "cpu",
    chunk: int = 128,
) -> float:
    """Mean epsilon-prediction MSE of ``model`` (eval mode, fp32) on a fixed batch."""
    was_training = model.training
    model.eval()
    x0, y, t, noise = batch
    total = 0.0
    for i in range(0, len(y), chunk):
        sl = slice(i, i + chunk)
        xt = scheduler.add_noise(x0[sl], noise[sl], t[sl]).to(device)
        pred = model(xt, timestep=t[sl].to(device), class_labels=y[sl].to(device)).sample.float()
        total += F.mse_loss(pred, noise[sl].to(device), reduction="sum").item()
    model.train(was_training)
    return total / noise.numel()


def _lr_factor(progress: float, step: int, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up then cosine decay to ``min_ratio`` as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def train(
    out_dir: str | Path,
    minutes: float | None = 40.0,
    max_steps: int | None = None,
    batch_size: int = 32,
    lr: float = 4e-4,
    seed: int = 0,
    device: str = "auto",
    num_layers: int | None = None,
    hidden: int | None = None,
    head_dim: int = 32,
    label_dropout: float = 0.1,
    ema_decay: float | None = 0.995,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    eval_size: int = 512,
    log_every: int = 25,
    data_root: str | Path = DEFAULT_ROOT,
    num_threads: int | None = None,
    command: str | None = None,
    init_from: str | Path | None = None,
    checkpoint_minutes: float | None = None,
) -> dict[str, Any]:
    """Train the Fashion-MNIST DiT and save it to ``out_dir`` (``save_pretrained`` layout + model card).

    Stops at ``minutes`` of training wall time or ``max_steps`` optimizer steps, whichever comes first (at
    least one must be set).  ``hidden`` is the model width (``hidden // head_dim`` heads); ``None`` keeps
    ``EMBEDDED_CONFIG``.  On CPU torch uses ``num_threads`` threads (default: all cores; 1 is faster on a
    machine shared with other jobs).  With ``ema_decay`` the EMA weights are saved.  Returns the training log (also
    written to ``out_dir/training_log.json``).

    ``init_from`` continues training from a saved model folder (its weights; a fresh optimizer, warm-up and
    schedule); its ``training_log.json``, if any, is carried into ``history`` so the card covers every stage.
    ``out_dir`` must then differ from ``init_from``.  ``checkpoint_minutes`` saves the current (EMA) weights to
    ``out_dir/checkpoint`` at that interval, so a run cut short still leaves usable weights.
    """
    if minutes is None and max_steps is None:
        raise ValueError("set minutes and/or max_steps")
    t_start = time.time()
    out_dir = Path(out_dir)
    dev = _resolve_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(num_threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    np.random.seed(seed)
    model, history = _starting_model(init_from, out_dir, _model_config(num_layers, hidden, head_dim), dev)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    data = _TrainData.load(data_root, scheduler.config.num_train_timesteps, eval_size)
    loss_untrained = eval_loss(model, scheduler, data.eval_batch, dev)
    print(f"[train] {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params on {dev}; {data.source}; "
          f"{'start' if init_from is not None else 'untrained'} eval loss {loss_untrained:.4f}", flush=True)
    settings = _Settings(minutes, max_steps, batch_size, lr, seed, label_dropout, ema_decay, warmup_steps,
                         weight_decay, log_every, checkpoint_minutes)
    ema, run = _train_loop(model, scheduler, data, settings, dev, out_dir)
    loss_trained_raw = eval_loss(model, scheduler, data.eval_batch, dev)
    final = ema if ema is not None else model
    loss_trained = eval_loss(final, scheduler, data.eval_batch, dev) if ema is not None else loss_trained_raw
    final = _save(final, out_dir)
    log = _training_log(
        settings, run, final, model, dev, data,
        command=command or _default_command(locals_for_command(
            out_dir, minutes, max_steps, batch_size, lr, seed, device, num_layers, hidden, num_threads, init_from)),
        losses=(loss_untrained, loss_trained, loss_trained_raw), total_wall_s=time.time() - t_start,
        init_from=init_from, history=history)
    (out_dir / "training_log.json").write_text(json.dumps(log, indent=1), encoding="utf-8")
    (out_dir / "MODEL_CARD.md").write_text(model_card(log), encoding="utf-8")
    print(f"[train] done: {run.steps} steps in {run.wall_s:.0f}s; eval loss {loss_untrained:.4f} -> "
          f"{loss_trained:.4f}; saved to {out_dir}", flush=True)
    return log


def _model_config(num_layers: int | None, hidden: int | None, head_dim: int) -> dict[str, Any]:
    """The changes to ``EMBEDDED_CONFIG`` that the width and depth options ask for."""
    cfg: dict[str, Any] = {}
    if num_layers is not None:
        cfg["num_layers"] = num_layers
    if hidden is not None:
        if hidden % head_dim:
            raise ValueError(f"hidden={hidden} must be a multiple of head_dim={head_dim}")
        cfg["num_attention_heads"] = hidden // head_dim
        cfg["attention_head_dim"] = head_dim
    return cfg


def _starting_model(init_from: str | Path | None, out_dir: Path, cfg: dict[str, Any], dev: torch.device
                    ) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """A fresh model, or the one in ``init_from`` with its earlier stages, on ``dev`` with diffusers' label dropout
    off (the trainer drops labels itself, once per sample for the whole network)."""
    history: list[dict[str, Any]] = []
    if init_from is not None:
        model, history = _resume(init_from, out_dir, cfg)
        model = model.to(dev)
    else:
        model = build_model(cfg).to(dev)
    set_label_dropout(model, 0.0)
    return model, history


@dataclass
class _TrainData:
    """Training images (uint8 ``[N, 1, 28, 28]``, converted per batch) and labels, the fixed held-out batch, and
    where they came from."""

    images: torch.Tensor
    labels: torch.Tensor
    eval_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    source: str

    @classmethod
    def load(cls, root: str | Path, num_train_timesteps: int, eval_size: int) -> _TrainData:
        x_tr, y_tr, x_te, y_te, source = _load_train_data(root)
        batch = _eval_batch(x_te, y_te, eval_size, 0, num_train_timesteps)  # same batch for every seed and stage
        return cls(torch.from_numpy(x_tr).unsqueeze(1), torch.from_numpy(y_tr.astype(np.int64)), batch, source)


@dataclass
class _Settings:
    """The options of the loop (see :func:`train`)."""

    minutes: float | None
    max_steps: int | None
    batch_size: int
    lr: float
    seed: int
    label_dropout: float
    ema_decay: float | None
    warmup_steps: int
    weight_decay: float
    log_every: int
    checkpoint_minutes: float | None


@dataclass
class _Run:
    """What the loop did: optimizer steps, the logged loss curve, the last and smoothed losses, the last learning
    rate, its wall time, and whether it ran under bf16 autocast."""

    steps: int = 0
    curve: list[dict[str, float]] = field(default_factory=list)
    loss: float = math.nan
    smoothed: float | None = None
    lr: float = 0.0
    wall_s: float = 0.0
    bf16: bool = False

    def record(self, wall_s: float) -> None:
        self.curve.append({"step": self.steps, "wall_s": round(wall_s, 2), "loss": round(self.loss, 5),
                           "smoothed_loss": round(self.smoothed, 5), "lr": self.lr})


def _train_loop(model: torch.nn.Module, scheduler: DDPMScheduler, data: _TrainData, settings: _Settings,
                dev: torch.device, out_dir: Path) -> tuple[torch.nn.Module | None, _Run]:
    """The optimizer loop until the time or step budget: AdamW on a warm-up then cosine schedule, the EMA copy
    (returned, or ``None`` without ``ema_decay``), the loss log and the checkpoints."""
    s = settings
    ema = copy.deepcopy(model).eval().requires_grad_(False) if s.ema_decay else None
    opt = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=(0.9, 0.999))
    run = _Run(bf16=dev.type == "cuda")
    gen = torch.Generator().manual_seed(s.seed)
    budget_s = None if s.minutes is None else s.minutes * 60.0
    batches = _Batches(len(data.labels), s.batch_size, gen)
    t_loop = time.time()
    next_checkpoint = s.checkpoint_minutes * 60.0 if s.checkpoint_minutes else math.inf
    model.train()
    while True:
        elapsed = time.time() - t_loop
        if (s.max_steps is not None and run.steps >= s.max_steps) or (budget_s is not None and elapsed >= budget_s):
            break
        progress = max(run.steps / s.max_steps if s.max_steps else 0.0, elapsed / budget_s if budget_s else 0.0)
        for group in opt.param_groups:
            group["lr"] = s.lr * _lr_factor(progress, run.steps, s.warmup_steps)
        loss = _step(model, opt, scheduler, data, batches.next(), s.label_dropout, gen, dev, run.bf16)
        run.steps += 1
        if ema is not None:
            _update_ema(ema, model, s.ema_decay, run.steps)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at step {run.steps}")
        run.loss, run.lr = loss, opt.param_groups[0]["lr"]
        run.smoothed = loss if run.smoothed is None else 0.95 * run.smoothed + 0.05 * loss
        if run.steps % s.log_every == 0 or run.steps == 1:
            run.record(time.time() - t_loop)
            print(f"[train] step {run.steps} {run.curve[-1]['wall_s']:.0f}s loss {loss:.4f} smoothed "
                  f"{run.smoothed:.4f}", flush=True)
        if time.time() - t_loop >= next_checkpoint:
            next_checkpoint += s.checkpoint_minutes * 60.0
            _save_checkpoint(ema if ema is not None else model, out_dir / "checkpoint", run.steps,
                             time.time() - t_loop)
    run.wall_s = time.time() - t_loop
    if run.steps and (not run.curve or run.curve[-1]["step"] != run.steps):
        run.record(run.wall_s)
    return ema, run


class _Batches:
    """Indices of the training batches: a seeded permutation, drawn again when too few images are left."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.batch_size, self.gen = n, batch_size, gen
        self.perm, self.cursor = torch.randperm(n, generator=gen), 0

    def next(self) -> torch.Tensor:
        if self.cursor + self.batch_size > len(self.perm):
            self.perm, self.cursor = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return idx


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, scheduler: DDPMScheduler, data: _TrainData,
          idx: torch.Tensor, label_dropout: float, gen: torch.Generator, dev: torch.device, bf16: bool) -> float:
    """One optimizer step on the images ``idx``: labels dropped to the null class at ``label_dropout``, random
    timesteps and noise, epsilon MSE, gradient norm clipped at 1; returns the loss."""
    x0 = to_model_range(data.images[idx]).to(dev)
    y = data.labels[idx].clone()
    y[torch.rand(len(y), generator=gen) < label_dropout] = NULL_CLASS
    y = y.to(dev)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(y),), generator=gen).to(dev)
    noise = torch.randn(x0.shape, generator=gen).to(dev)
    xt = scheduler.add_noise(x0, noise, t)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        pred = model(xt, timestep=t, class_labels=y).sample
    loss = F.mse_loss(pred.float(), noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss.item()


def _update_ema(ema: torch.nn.Module, model: torch.nn.Module, ema_decay: float, step: int) -> None:
    """Move the EMA weights towards the model's (decay warmed up over the first steps)."""
    decay = min(ema_decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)


def _save(final: torch.nn.Module, out_dir: Path) -> torch.nn.Module:
    """Save ``final`` (moved to the CPU, eval mode) in the ``save_pretrained`` layout; returns it."""
    final = final.to("cpu").eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    final.save_pretrained(str(out_dir), safe_serialization=True)
    for f in out_dir.glob("*.safetensors"):
        f.chmod(0o644)  # safetensors writes 0600; shipped/shared files should be world-readable
    return final


def _training_log(settings: _Settings, run: _Run, final: torch.nn.Module, model: torch.nn.Module, dev: torch.device,
                  data: _TrainData, *, command: str, losses: tuple[float, float, float], total_wall_s: float,
                  init_from: str | Path | None, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The training log (``training_log.json``; the model card is written from it)."""
    s = settings
    loss_untrained, loss_trained, loss_trained_raw = losses
    return {
        "command": command,
        "seed": s.seed,
        "steps": run.steps,
        "batch_size": s.batch_size,
        "lr": s.lr,
        "lr_schedule": f"linear warm-up {s.warmup_steps} steps, cosine to 0.1x over the budget",
        "optimizer": f"AdamW(betas=(0.9, 0.999), weight_decay={s.weight_decay}), grad-norm clip 1.0",
        "label_dropout": s.label_dropout,
        "ema_decay": s.ema_decay,
        "saved_weights": "EMA" if s.ema_decay else "raw",
        "model_config": {k: v for k, v in final.config.items() if not k.startswith("_")},
        "num_params": sum(p.numel() for p in model.parameters()),
        "eval": {"images": len(data.eval_batch[1]), "source": "held-out test split, fixed seeded timesteps and noise",
                 "loss_untrained": loss_untrained, "loss_trained": loss_trained,
                 "loss_trained_raw_weights": loss_trained_raw},
        "final_smoothed_loss": run.smoothed,
        "train_wall_s": run.wall_s,
        "total_wall_s": total_wall_s,
        "device": str(dev),
        "hardware": _hardware(dev),
        "bf16_autocast": run.bf16,
        "dataset": data.source,
        "dataset_notice": FASHION_MNIST_NOTICE,
        "init_from": None if init_from is None else str(init_from),
        "history": history,
        "loss_curve": run.curve,
    }


def _resume(init_from: str | Path, out_dir: Path, cfg: dict[str, Any]) -> tuple[torch.nn.Module, list[dict]]:
    """Weights and earlier training stages of the model folder ``init_from`` (fp32, CPU, train mode)."""
    src = Path(init_from).expanduser()
    if not src.is_dir():
        raise FileNotFoundError(f"init_from={str(init_from)!r} is not a model folder")
    if out_dir.resolve() == src.resolve():
        raise ValueError(f"out_dir and init_from are both {src}: write the continued run to a new folder")
    model = load_model(str(src)).train()
    for key, want in cfg.items():
        if model.config[key] != want:
            raise ValueError(f"init_from has {key}={model.config[key]}, but {want} was asked for")
    history: list[dict[str, Any]] = []
    log_path = src / "training_log.json"
    if log_path.is_file():
        prior = json.loads(log_path.read_text(encoding="utf-8"))
        history = list(prior.get("history", []))
        history.append({k: prior.get(k) for k in (
            "command", "steps", "batch_size", "lr", "train_wall_s", "hardware", "eval", "final_smoothed_loss")})
    return model, history


def _save_checkpoint(model: torch.nn.Module, folder: Path, step: int, wall_s: float) -> None:
    """Save the weights to ``folder``, replacing the previous checkpoint only once the new one is complete."""
    from ..outputs import staged_output

    with staged_output(folder) as stage:
        model.save_pretrained(str(stage), safe_serialization=True)
        (stage / "checkpoint.json").write_text(json.dumps({"step": step, "wall_s": round(wall_s, 1)}),
                                               encoding="utf-8")
    print(f"[train] checkpoint at step {step} -> {folder}", flush=True)


def locals_for_command(
    out_dir: Path, minutes: float | None, max_steps: int | None, batch_size: int, lr: float, seed: int,
    device: str, num_layers: int | None, hidden: int | None, num_threads: int | None = None,
    init_from: str | Path | None = None,
) -> dict[str, Any]:
    """The keyword arguments that identify a run, for the reproduction command."""
    return {"out_dir": str(out_dir), "minutes": minutes, "max_steps": max_steps, "batch_size": batch_size,
            "lr": lr, "seed": seed, "device": device, "num_layers": num_layers, "hidden": hidden,
            "num_threads": num_threads, "init_from": None if init_from is None else str(init_from)}


def _default_command(kwargs: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if v is not None)
    return "python -c " + shlex.quote(f"from aselect_kernels.embedded.train import train; train({args})")


def main_train(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line front end of :func:`train` (``python -m aselect_kernels.embedded.train OUT_DIR [options]``)."""
    import argparse

    p = argparse.ArgumentParser(prog="aselect train", description="Train the Fashion-MNIST DiT (DDPM eps-prediction).")
    p.add_argument("out_dir", help="output folder (save_pretrained layout + MODEL_CARD.md + training_log.json)")
    p.add_argument("--minutes", type=float, default=40.0, help="training wall-time budget; 0 = none")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer-step budget")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--num-layers", type=int, default=None, help="DiT blocks (default: EMBEDDED_CONFIG)")
    p.add_argument("--hidden", type=int, default=None, help="model width, a multiple of --head-dim")
    p.add_argument("--head-dim", type=int, default=32)
    p.add_argument("--num-threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--no-ema", action="store_true", help="save the raw weights instead of an EMA")
    p.add_argument("--data-root", default=DEFAULT_ROOT, help="folder of the Fashion-MNIST idx .gz files")
    p.add_argument("--init-from", default=None, help="continue from this saved model folder (not OUT_DIR)")
    p.add_argument("--checkpoint-minutes", type=float, default=None, help="save weights to OUT_DIR/checkpoint")
    args = p.parse_args(argv)
    words = sys.argv[1:] if argv is None else argv
    command = "python -m aselect_kernels.embedded.train " + " ".join(shlex.quote(a) for a in words)
    return train(
        args.out_dir, minutes=args.minutes or None, max_steps=args.max_steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, device=args.device, num_layers=args.num_layers, hidden=args.hidden,
        head_dim=args.head_dim, num_threads=args.num_threads, ema_decay=None if args.no_ema else 0.995,
        data_root=args.data_root, command=command, init_from=args.init_from,
        checkpoint_minutes=args.checkpoint_minutes,
    )


if __name__ == "__main__":
    main_train()
