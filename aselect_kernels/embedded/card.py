"""The model card of a trained model, written from its training log."""

from __future__ import annotations

from typing import Any

from .model import NULL_CLASS


def _subsample(curve: list[dict[str, float]], n: int = 20) -> list[dict[str, float]]:
    if len(curve) <= n:
        return curve
    idx = sorted({round(i * (len(curve) - 1) / (n - 1)) for i in range(n)})
    return [curve[i] for i in idx]


def _stages(log: dict[str, Any]) -> str:
    """Markdown lines for the earlier stages of a continued run (empty for a run from scratch)."""
    if not log.get("history"):
        return ""
    lines = ["", "Trained in stages; the last one is detailed below. Earlier stages:", ""]
    for i, h in enumerate(log["history"], 1):
        ev = h.get("eval") or {}
        lines.append(f"{i}. `{h.get('command')}`: {h.get('steps')} steps of batch {h.get('batch_size')}, lr "
                     f"{h.get('lr')}, {h.get('train_wall_s') or 0:.0f} s on {h.get('hardware')}; eval loss "
                     f"{ev.get('loss_untrained', float('nan')):.4f} -> {ev.get('loss_trained', float('nan')):.4f}.")
    total = sum(h.get("steps") or 0 for h in log["history"]) + log["steps"]
    wall = sum(h.get("train_wall_s") or 0 for h in log["history"]) + log["train_wall_s"]
    lines.append(f"\nIn all: {total} optimizer steps, {wall:.0f} s of training.\n\nLast stage:")
    return "\n".join(lines) + "\n"


def model_card(log: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` for the training log ``log`` (with its earlier stages, if any)."""
    cfg = log["model_config"]
    hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ev = log["eval"]
    notes = f"\n- Notes: {log['notes']}" if log.get("notes") else ""
    stages = _stages(log)
    start = "untrained (same seed)" if not log.get("init_from") else f"start of the last stage ({log['init_from']})"
    rows = "\n".join(
        f"| {r['step']} | {r['wall_s']:.0f} | {r['smoothed_loss']:.4f} |" for r in _subsample(log["loss_curve"])
    )
    return f"""# Embedded Fashion-MNIST DiT

A class-conditional pixel-space `DiTTransformer2DModel` (diffusers) that predicts DDPM noise (epsilon) on
1x28x28 Fashion-MNIST images, used as the default model of aselect-kernels.

- Architecture: {cfg['num_layers']} blocks, hidden {hidden} ({cfg['num_attention_heads']} heads x \
{cfg['attention_head_dim']}), patch {cfg['patch_size']} ({(cfg['sample_size'] // cfg['patch_size']) ** 2} tokens), \
adaLN-zero, {log['num_params'] / 1e6:.2f}M parameters.
- Classes: labels 0-9 (Fashion-MNIST), {NULL_CLASS} = null/unconditional class (label dropout {log['label_dropout']}).
- Inputs: images in [-1, 1]; `DDPMScheduler(num_train_timesteps=1000)` (linear betas), integer timesteps.
- Saved weights: {log['saved_weights']}{f" (decay {log['ema_decay']})" if log['ema_decay'] else ""}.

## Training
{stages}
- Command: `{log['command']}`
- Seed {log['seed']}; {log['steps']} optimizer steps of batch {log['batch_size']}; lr {log['lr']} \
({log['lr_schedule']}); {log['optimizer']}; bf16 autocast: {log['bf16_autocast']}.
- Wall time: {log['train_wall_s']:.0f} s training, {log['total_wall_s']:.0f} s in all.
- Hardware: {log['hardware']}.
- Data: {log['dataset']}.{notes}

## Loss

Held-out evaluation ({ev['images']} test images, fixed seeded timesteps and noise, epsilon MSE):

| model | eval loss |
| --- | --- |
| {start} | {ev['loss_untrained']:.4f} |
| trained (saved weights) | {ev['loss_trained']:.4f} |
| trained (raw weights) | {ev['loss_trained_raw_weights']:.4f} |

Training loss (exponentially smoothed, factor 0.95):

| step | wall s | smoothed loss |
| --- | --- | --- |
{rows}

Full log: `training_log.json`.

## Data license

{log['dataset_notice']}
"""
