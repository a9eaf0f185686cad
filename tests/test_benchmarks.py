"""The benchmark harness (benchmarks/): correctness checks, not timings.

The suite is exercised the way a user runs it (``python -m benchmarks --quick --only ...``) on
cheap workloads, and in-process with a tiny schedule; the tests assert that fusegrad eager and
the hand-written numpy step agree (no WRONG rows), that the hand-written numpy steps match
PyTorch, and that a contender that cannot run becomes a 'skipped' row instead of a crash.
Timings are never asserted: the CI machines are small and shared.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import numpy_steps, report, runner, worker  # noqa: E402
from benchmarks.contenders import CONTENDERS, Prepared, Skip, _fusegrad_compile  # noqa: E402
from benchmarks.workloads import DYNAMIC_NET_SEED, WORKLOADS, Schedule  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_FUSEGRAD = importlib.util.find_spec("fusegrad") is not None
TINY = Schedule(warmup=2, repeats=2, inner=2)


def _losses(step, batches, n: int) -> list[float]:
    random.seed(DYNAMIC_NET_SEED)
    out = []
    for i in range(n):
        loss = step(*batches[i % len(batches)])
        out.append(float(loss.item() if hasattr(loss, "item") else loss))
    return out


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.parametrize("name", list(WORKLOADS))
def test_numpy_step_matches_torch(name):
    """The hand-written forward/backward/update equals PyTorch running the shared definition."""
    import torch

    w = WORKLOADS[name]
    sizes, _ = w.config(quick=True)
    init = w.make_init(sizes)
    ours = _losses(numpy_steps.BUILDERS[w.impl](copy.deepcopy(init)), init.batches, 6)
    _, step = w.torch_like(torch, copy.deepcopy(init))
    batches = [tuple(torch.from_numpy(a.copy()) for a in b) for b in init.batches]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core CI machine makes torch's spinning pool crawl
    try:
        theirs = _losses(step, batches, 6)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert ours[-1] != ours[0]  # the update really changes the loss


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_jax_step_matches_numpy():
    from benchmarks import jax_steps

    w = WORKLOADS["dynamic_net"]
    init = w.make_init(w.quick_sizes)
    ours = _losses(numpy_steps.BUILDERS[w.impl](init), init.batches, 6)
    theirs = _losses(jax_steps.BUILDERS[w.impl](init), init.batches, 6)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_cost_models_and_bounds():
    limits = {"bandwidth_GBps": 10.0, "gemm_f32_GFLOPs": 100.0}
    for w in WORKLOADS.values():
        sizes, sched = w.config(quick=False)
        cost = w.cost(sizes, sched)
        assert cost.bytes > 0 and cost.flops > 0 and cost.model
        assert runner.lower_bound_s(cost, limits) > 0


def _row(key, first, final, median=1e-3):
    return {
        "workload": "w",
        "contender": key,
        "label": key,
        "status": "ok",
        "first_loss": first,
        "final_loss": final,
        "median_s": median,
        "min_s": median,
    }


def test_check_losses_marks_the_odd_one_wrong():
    rows = [
        _row("fusegrad_eager", 1.0, 0.5),
        _row("numpy", 1.0, 0.5002),
        _row("torch_eager", 1.0, 0.5),
        _row("jax", 1.0, 0.6, median=1e-6),
    ]
    runner.check_losses(rows)
    runner.add_ratios(rows, bound_s=1e-4)
    assert [r["check"] for r in rows] == ["ok", "ok", "ok", "WRONG"]
    assert "vs_fusegrad_eager" not in rows[3]  # a wrong answer is not reported as fast
    assert rows[1]["vs_fusegrad_eager"] == pytest.approx(1.0)


def test_check_losses_prefers_consensus_over_a_wrong_fusegrad():
    rows = [
        _row("fusegrad_eager", 1.0, 0.9),
        _row("numpy", 1.0, 0.5),
        _row("torch_eager", 1.0, 0.5),
    ]
    runner.check_losses(rows)
    assert [r["check"] for r in rows] == ["WRONG", "ok", "ok"]


def test_compile_missing_is_a_skip(monkeypatch):
    """No ``fusegrad.compile`` (or one that raises on the first step) is a skipped row."""
    with pytest.raises(Skip):
        _fusegrad_compile(object(), lambda: None, "cpu")

    class Broken:
        key, label, compiles, modules = "broken", "broken compiler", True, ("numpy",)

        def prepare(self, workload, init, device):
            def step():
                raise NotImplementedError("no lowering for op 'gelu'")

            return Prepared(step, [()], float)

    monkeypatch.setitem(CONTENDERS, "broken", Broken())
    result = worker.measure({"workload": "elementwise", "contender": "broken", "quick": True})
    assert result["status"] == "skipped"
    assert "no lowering" in result["note"]


@pytest.mark.skipif(not HAS_FUSEGRAD, reason="fusegrad not importable")
def test_suite_in_process_fusegrad_eager_agrees_with_numpy():
    names = ["small_mlp", "elementwise", "mnist_like_classifier"]
    rep = runner.run_suite(
        names,
        ["numpy", "fusegrad_eager"],
        quick=True,
        schedule=TINY,
        progress=runner.PlainProgress(2 * len(names)),
    )
    rows = rep["results"]
    assert len(rows) == 2 * len(names)
    for r in rows:
        assert r["status"] == "ok", r
        assert r["check"] == "ok", r
        assert r["median_s"] > 0 and r["memory"]["peak_growth_mib"] >= 0
    text = report.plain_table(rep)
    assert "WRONG" not in text and "fusegrad eager" in text


def test_cli_quick_json_and_plot(tmp_path):
    """``python -m benchmarks --quick --only small_mlp`` writes JSON (and a plot if it can)."""
    contenders = "numpy,fusegrad_eager" if HAS_FUSEGRAD else "numpy"
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--quick",
            "--only",
            "small_mlp",
            "--contenders",
            contenders,
            "--json",
            str(out),
            "--plot",
            str(png),
            "--plain",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert {"machine", "versions", "limits", "workloads", "results"} <= set(data)
    assert data["limits"]["bandwidth_GBps"] > 0 and data["limits"]["gemm_f32_GFLOPs"] > 0
    for r in data["results"]:
        assert r["status"] == "ok" and r["check"] == "ok", r
    if importlib.util.find_spec("matplotlib"):
        assert png.stat().st_size > 0
    assert "small_mlp" in proc.stdout


def test_eager_overhead_runs_quick():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.eager_overhead", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-op cost" in proc.stdout and "DynamicNet" in proc.stdout
