"""The GPU benchmark run's Python paths, on the CPU: what ``bench/run_all_gpu.sh`` needs to run on its first try.

* the compile check and the scored-forward checks call the model more than once per ``TapSet.rows``; each call is a
  new forward, so each must set ``rows`` (the tap guard refuses a second call in one forward);
* the bench scripts import without diffusers (the plain DiT stands in);
* a failed JIT build of the CUDA extension is remembered for the run, and a stale build lock is named;
* the GPU mean-leak accuracy case is as demanding as the CPU test of it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_forward  # noqa: E402
import gpu_checks  # noqa: E402

from aselect_kernels.ops import cuda_stats  # noqa: E402
from aselect_kernels.reference import StatsConfig  # noqa: E402
from aselect_kernels.taps import TapSet  # noqa: E402

CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ repeated forwards


def test_compile_check_passes_on_the_cpu() -> None:
    """The compiled model is called twice; each call is a forward of its own (before: the tap guard fired)."""
    res = gpu_checks.run_compile(CPU)
    assert res["fullgraph"] == "ok", res.get("error")
    assert res["passed"] and res["max_rel_diff_vs_eager"] <= 1e-5


def test_rehearsed_no_sync_and_graph_checks() -> None:
    """Off CUDA the no-sync and graph checks run their forwards (warm-up, checked call; two warm-ups, capture and
    replay) with stand-ins for the CUDA calls; the replay's statistics equal eager ones on the same inputs."""
    out = bench_forward.run_checks(CPU, True, "plain", ["triton"])
    for name in ("no_host_sync", "graph_capture"):
        assert out[name]["status"] == bench_forward.REHEARSED, out[name]
    assert out["graph_capture"]["auto"] == out["graph_capture"]["auto_overlap"] == "equal"
    assert out["inplace_after_tap_detected"]["status"].startswith("skipped")


def test_graph_variant_replays_the_eager_statistics() -> None:
    """A forward variant captured (rehearsed on the CPU: three forwards under one hook set) keeps the statistics of
    its eager twin, computed independently by a fresh TapSet."""
    bundle = bench_forward.get_model("tiny", CPU, torch.float32, "plain")
    taps = bundle.taps_for("attn_mlp")
    inputs = bundle.inputs(2, CPU, torch.float32)
    with torch.no_grad():
        graph = bench_forward.Variant("g", bundle, taps, 2, inputs, backend="torch", graph=True)
        with graph.active():
            graph()
        with TapSet(bundle.model, taps, 2, backend="torch") as ts:
            ts.rows = torch.arange(2)
            bundle(*inputs)
            eager = ts.collect()
    assert isinstance(graph._graph, bench_forward.RehearsedGraph)
    assert bench_forward.stats_equal(graph.stats(), eager)


# ---------------------------------------------------------------------------------------------- no diffusers


def test_bench_scripts_import_and_build_without_diffusers() -> None:
    """With diffusers hidden, the bench modules import, the DiT is the plain one, and asking for diffusers says
    why it cannot."""
    code = """
import sys, torch
sys.path.insert(0, "bench")
try:
    import diffusers  # noqa
    raise SystemExit("diffusers not hidden")
except ImportError:
    pass
import bench_stats, bench_forward, gpu_checks, common
from aselect_kernels.embedded.model import EMBEDDED_CONFIG
b = common.build_dit("tiny", torch.device("cpu"), torch.float32)
print(b.kind, len(b.taps))
try:
    common.build_dit("tiny", torch.device("cpu"), torch.float32, prefer="diffusers")
except ImportError as exc:
    print("refused:", exc)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO / "bench" / "no_diffusers") + os.pathsep + str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plain DiT" in proc.stdout and " 4\n" in proc.stdout, proc.stdout
    assert "refused: model 'diffusers' asked for" in proc.stdout
    assert "!!! diffusers does not import" in proc.stderr


# ------------------------------------------------------------------------------------------- the CUDA build


class _Builds:
    """A build function that fails (or succeeds) and counts its calls."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.calls, self.error = 0, error

    def __call__(self) -> ModuleType:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return ModuleType("built")


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setattr(cuda_stats, "_failure", [])
    return monkeypatch


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_failed_build_is_remembered_for_the_run(tmp_path: Path, fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(cuda_stats.RUN_ID_ENV, "run-1")
    failing = _Builds(RuntimeError("ninja: build stopped: subcommand failed"))
    with pytest.raises(cuda_stats.CudaStatsUnavailable, match="subcommand failed"):
        cuda_stats.guarded_build(tmp_path, failing)
    marker = json.loads((tmp_path / cuda_stats.FAILED_FILE).read_text())
    assert marker["run"] == "run-1" and "subcommand failed" in marker["reason"]
    assert not (tmp_path / cuda_stats.OWNER_FILE).exists()
    fresh.setattr(cuda_stats, "_failure", [])  # another process of the same run
    with pytest.raises(cuda_stats.CudaStatsUnavailable, match="earlier in this run.*|subcommand failed"):
        cuda_stats.guarded_build(tmp_path, failing)
    assert failing.calls == 1
    with pytest.raises(cuda_stats.CudaStatsUnavailable, match="earlier in this process"):
        cuda_stats.guarded_build(tmp_path, failing)  # and the same process
    assert failing.calls == 1
    fresh.setattr(cuda_stats, "_failure", [])  # the next run builds again, and a success clears the record
    fresh.setenv(cuda_stats.RUN_ID_ENV, "run-2")
    ok = _Builds()
    assert cuda_stats.guarded_build(tmp_path, ok).__name__ == "built" and ok.calls == 1
    assert not (tmp_path / cuda_stats.FAILED_FILE).exists()


def test_interrupted_build_is_recorded(tmp_path: Path, fresh: pytest.MonkeyPatch) -> None:
    fresh.setenv(cuda_stats.RUN_ID_ENV, "run-1")
    with pytest.raises(KeyboardInterrupt):
        cuda_stats.guarded_build(tmp_path, _Builds(KeyboardInterrupt()))
    assert "interrupted" in json.loads((tmp_path / cuda_stats.FAILED_FILE).read_text())["reason"]


def test_lock_of_a_killed_builder_is_named_and_removed(tmp_path: Path, fresh: pytest.MonkeyPatch) -> None:
    """A previous run's builder died holding the lock: the lock is named, removed, and the build runs."""
    fresh.setenv(cuda_stats.RUN_ID_ENV, "run-2")
    (tmp_path / cuda_stats.LOCK_FILE).touch()
    pid = _dead_pid()
    owner = {"pid": pid, "host": cuda_stats.socket.gethostname(), "run": "run-1", "time": time.time() - 30}
    (tmp_path / cuda_stats.OWNER_FILE).write_text(json.dumps(owner))
    assert f"killed build (pid {pid}" in cuda_stats.stale_lock(tmp_path)
    ok = _Builds()
    with pytest.warns(RuntimeWarning, match=str(tmp_path / cuda_stats.LOCK_FILE)):
        cuda_stats.guarded_build(tmp_path, ok)
    assert ok.calls == 1 and not (tmp_path / cuda_stats.LOCK_FILE).exists()


def test_lock_of_a_builder_killed_in_this_run_fails_the_run(tmp_path: Path, fresh: pytest.MonkeyPatch) -> None:
    """This run's build step was killed (its timeout): later processes of the run do not wait or build again."""
    fresh.setenv(cuda_stats.RUN_ID_ENV, "run-1")
    (tmp_path / cuda_stats.LOCK_FILE).touch()
    owner = {"pid": _dead_pid(), "host": cuda_stats.socket.gethostname(), "run": "run-1", "time": time.time()}
    (tmp_path / cuda_stats.OWNER_FILE).write_text(json.dumps(owner))
    build = _Builds()
    with pytest.raises(cuda_stats.CudaStatsUnavailable, match="stale lock .*lock left by a killed build"):
        cuda_stats.guarded_build(tmp_path, build)
    assert build.calls == 0
    fresh.setattr(cuda_stats, "_failure", [])
    with pytest.raises(cuda_stats.CudaStatsUnavailable, match="earlier in this run"):
        cuda_stats.guarded_build(tmp_path, build)
    assert build.calls == 0


def test_old_lock_without_builder_is_stale_and_a_young_one_is_not(tmp_path: Path) -> None:
    lock = tmp_path / cuda_stats.LOCK_FILE
    lock.touch()
    assert cuda_stats.stale_lock(tmp_path) is None  # a build may be running: torch waits for it
    old = time.time() - cuda_stats.STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    assert "no live builder" in cuda_stats.stale_lock(tmp_path)
    (tmp_path / cuda_stats.OWNER_FILE).write_text(json.dumps(
        {"pid": os.getpid(), "host": cuda_stats.socket.gethostname(), "run": None, "time": old}))
    assert cuda_stats.stale_lock(tmp_path) is None  # its builder (this process) is alive


# ------------------------------------------------------------------------------------- the mean-leak check


def _leak_emulation(x: torch.Tensor, config: StatsConfig, correct: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The two ratios as a kernel with the split 16-bit basis computes them (operand ``x``, basis ``hi + lo``), in
    fp64, with or without the rowsum correction of the mean leak; the other statistics from the reference."""
    length = x.shape[1]
    ref = gpu_checks.reference64(x, config)
    hi, lo, _ = cuda_stats.kernel_basis(length, config.resolve_grid(length), float(config.cutoff), x.dtype, CPU)
    basis = hi.double() + lo.double()
    xd = x.double()
    mu = xd.mean(dim=1, keepdim=True)
    e_low = (basis @ (xd - mu if correct else xd)).square().sum(dim=(1, 2))
    e_centred = length * (xd - mu).square().sum(dim=(1, 2))
    e_high = (e_centred - e_low).clamp_min(0.0)
    out = ref.clone()
    out[:, 4], out[:, 5] = e_high / (length * xd.square().sum(dim=(1, 2))), e_high / e_centred
    return out.float(), ref


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gpu_mean_leak_case_catches_a_missing_correction(seed: int) -> None:
    """The GPU check's mean-leak case fails a bf16 kernel without the leak correction and passes one with it, as
    tests/test_fused_stats.py's CPU case does (before: mean 30 on an even L, where no leak shows)."""
    cases = [c for c in gpu_checks.checks("full") if torch.bfloat16 in c.dtypes and c.offset >= 3000]
    assert cases
    for chk in cases:
        x = chk.make(torch.bfloat16, torch.Generator().manual_seed(seed), CPU)
        assert x.double().mean() > 2990
        rtol = gpu_checks.tolerance(torch.bfloat16, chk.length, chk.channels)
        assert gpu_checks.compare(*_leak_emulation(x, chk.config, True), x, rtol)["passed"]
        assert not gpu_checks.compare(*_leak_emulation(x, chk.config, False), x, rtol)["passed"]
    assert any(c.name == cases[0].name for c in gpu_checks.checks("smoke"))


def test_mean_leak_case_passes_the_kernel() -> None:
    """The case itself, through the Triton kernel (interpreter) and the check's comparison."""
    from aselect_kernels.ops.fused_stats import fused_stats

    chk = next(c for c in gpu_checks.checks("smoke") if c.layout == "mean_leak")
    for dtype in chk.dtypes:
        x = chk.make(dtype, torch.Generator().manual_seed(4), CPU)
        ref = gpu_checks.reference64(x, chk.config)
        res = gpu_checks.compare(fused_stats(x, chk.config), ref, x, gpu_checks.tolerance(dtype, 63, 48))
        assert res["passed"], res


# ------------------------------------------------------------------------------------ the notebook's arithmetic

_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}


def test_notes_occupancy_claims_follow_from_the_register_file() -> None:
    """Every "R registers per thread at W warps: P programs of W warps per SM" of bench/NOTES.md is what sm_90's
    65,536-register file holds (registers allocated per warp in steps of 8 per thread)."""
    text = " ".join((REPO / "bench" / "NOTES.md").read_text(encoding="utf-8").split())
    claims = re.findall(r"(\d+) registers per thread at (\d+) warps: (\w+) programs? of \d+ warps per SM", text)
    assert len(claims) >= 2
    for regs, warps, programs in claims:
        per_program = -(-int(regs) // 8) * 8 * 32 * int(warps)
        assert _WORDS.get(programs.lower(), programs) == 65536 // per_program, (regs, warps, programs)
    stale = re.findall(r"255 registers[^.]*?\bone program|\bone program of 4 warps per SM \(255"
                       r"|one 4-warp program per SM", text, re.I)
    assert not stale, stale
