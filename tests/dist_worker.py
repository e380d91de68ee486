"""One rank of the 2-process test (tests/test_distributed.py), launched by ``torch.distributed.run``.

Each rank runs, in order: ``aselect select``, ``validate`` and ``probe`` through the command line, the API's
selection and dense probe grid on a tiny DiT (saving what this rank holds afterwards), a rank that raises, and
last a rank that hangs (the process group does not survive the timeout).  What each rank saw goes to
``OUT/<name>.rank<r>.json`` / ``.npy``.

Usage: ``python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py OUT IMAGES_NPZ``
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from aselect_kernels import distributed
from aselect_kernels.cli import main
from aselect_kernels.forward import default_call
from aselect_kernels.select import select_timestep
from aselect_kernels.validation.grids import dense_probe_grid
from aselect_kernels.validation.probe import dense_target

from tiny_models import tiny_dit

#: The command lines the test repeats in one process (without ``--out``).
SELECT_ARGS = ["select", "--model", "embedded", "--timesteps", "0,300,700", "--taps", "all:0,5",
               "--chunk-size", "4", "--device", "cpu", "--no-progress"]
VALIDATE_ARGS = ["validate", "--n-train", "24", "--n-test", "16", "--n-select", "5", "--timesteps", "0,500",
                 "--taps", "mlp_hidden:5", "--no-dense", "--device", "cpu", "--no-progress"]
PROBE_ARGS = ["probe", "--n-train", "24", "--n-test", "16", "--timesteps", "0,500", "--taps", "query:2",
              "--device", "cpu", "--no-progress"]
API_TS = [0, 250, 600, 999]
API_CHUNK = 5
#: Memory budget of the run where each rank plans its own chunks, bytes: 5 samples a chunk, so the shards of
#: 6 samples do not fall on the one-process run's chunk bounds.
BUDGET = 300_000
#: How long the ranks wait for a hanging rank in the last scenario, seconds.
HANG_TIMEOUT_S = 3.0


def api_inputs() -> tuple[torch.nn.Module, torch.Tensor, tuple, tuple]:
    """The tiny DiT, 3 images for selection, and a small labelled split for the dense grid."""
    model = tiny_dit()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 1, 12, 12, generator=gen)
    u8 = torch.randint(0, 256, (10, 1, 12, 12), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 2, (10,), generator=gen)
    xs = u8.float() / 127.5 - 1.0
    return model, x, (xs[:6], u8[:6, 0], labels[:6]), (xs[6:], u8[6:, 0], labels[6:])


def api_select(model: torch.nn.Module, x: torch.Tensor, call=None, chunk_size: int | None = API_CHUNK,
               memory_budget: int | None = None):
    return select_timestep(model, x, API_TS, taps="all", backend="torch", chunk_size=chunk_size, progress=False,
                           call=call, memory_budget=memory_budget)


def api_labelled(model: torch.nn.Module):
    """Few-label selection on 8 labelled images in chunks of 5: the ranks hold different images' means."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(8, 1, 12, 12, generator=gen)
    return select_timestep(model, x, API_TS[:3], taps="all", labels=[2, 5, 2, 5, 9, 9, 2, 5], backend="torch",
                           chunk_size=API_CHUNK, progress=False)


def api_dense(model: torch.nn.Module, train: tuple, test: tuple):
    """One chunk for all 32 samples: rank 1's shard is empty and it learns the buffers' shapes from rank 0.
    ``train``/``test`` are ``(images, uint8 pixels, labels)``; the pixel targets have 2 classes + background."""
    (xtr, utr, ytr), (xte, ute, yte) = train, test
    return dense_probe_grid(model, (xtr, dense_target(utr, ytr)), (xte, dense_target(ute, yte)), [0, 500],
                            ["transformer_blocks.1"], 3, chunk_size=64, progress=False)


def _error_of(fn) -> dict:
    start = time.perf_counter()
    try:
        fn()
    except RuntimeError as exc:
        return {"error": str(exc), "seconds": time.perf_counter() - start}
    return {"error": None, "seconds": time.perf_counter() - start}


def run(out: Path, images: str) -> None:
    distributed.init_from_env()
    r = distributed.rank()

    def save(name: str, value: object) -> None:
        (out / f"{name}.rank{r}.json").write_text(json.dumps(value))

    codes = {
        "select": main(SELECT_ARGS + ["--images", images, "--out", str(out / "select")]),
        "validate": main(VALIDATE_ARGS + ["--out", str(out / "validate")]),
        "probe": main(PROBE_ARGS + ["--out", str(out / "probe")]),
    }
    save("codes", codes)
    model, x, train, test = api_inputs()
    res = api_select(model, x)
    np.save(out / f"per_sample.rank{r}.npy", res.per_sample)
    lab = api_labelled(model)
    np.save(out / f"per_sample_labels.rank{r}.npy", lab.per_sample)
    save("labels", {k: v for k, v in lab.meta["labels"].items() if k != "fit_s"})
    budget = api_select(model, x, chunk_size=None, memory_budget=BUDGET)  # each rank sizes its own chunks
    np.save(out / f"per_sample_budget.rank{r}.npy", budget.per_sample)
    save("budget", {"mean": budget.mean.tolist(), "chunks": budget.meta["chunks"]})
    save("dense", {"metric": api_dense(model, train, test).metric.tolist()})

    def failing(model, x_t, t, b, cond, n):
        if r == 1:
            raise ValueError("injected failure in rank 1's forward")
        return default_call(model, x_t, t, b, cond, n)

    save("failing", _error_of(lambda: api_select(model, x, failing)))

    distributed.set_check_timeout(HANG_TIMEOUT_S)
    gave_up = out / "rank0_gave_up"

    def hanging(model, x_t, t, b, cond, n):
        while r == 1 and not gave_up.exists():  # hangs until rank 0 has ended its wait
            time.sleep(0.1)
        return default_call(model, x_t, t, b, cond, n)

    result = _error_of(lambda: api_select(model, x, hanging))
    save("hanging", result)
    if r == 0:
        gave_up.touch()
    sys.stdout.flush()
    os._exit(0)  # the group is broken after a timeout: leave without tearing it down


if __name__ == "__main__":
    run(Path(sys.argv[1]), sys.argv[2])
