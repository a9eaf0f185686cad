"""Fused reductions on the CPU: the pairwise chunk sum, and one loop that reduces over
different dims (the loss's mean, column sums, row sums) in one pass.

Values are checked against float64 numpy (the kernels accumulate in float64, so they must
be closer to it than float32 eager is) and against eager mode for a whole layer-norm step.
"""

from __future__ import annotations

import math
import platform
import re

import numpy as np
import pytest

import fusegrad
import fusegrad.nn as nn
import fusegrad.nn.functional as F
from fusegrad import fuse
from fusegrad.kernellib import pairwise_sum


def npy(t) -> np.ndarray:
    return np.asarray(t.detach().numpy())


def last_plan(step) -> fuse.Plan:
    return step.graphs[step.history[-1].key].plan


# --------------------------------------------------------------------------- pairwise_sum
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m", [1, 2, 3, 17, 500, 1023, 1024])
def test_pairwise_sum_is_the_float64_sum_of_the_first_m(dtype, m):
    rng = np.random.default_rng(m)
    w = (rng.standard_normal(1024) * 10 ** rng.uniform(-3, 3, 1024)).astype(dtype)
    want = math.fsum(float(v) for v in w[:m])  # exact
    d = np.full(512, np.nan)  # scratch: nothing may leak from it
    got = pairwise_sum(w, d, m)
    bound = 4 * m * np.finfo(np.float64).eps * float(np.abs(w[:m].astype(np.float64)).sum())
    assert abs(got - want) <= bound, (got, want)
    # the padding beyond m is zeros (a stale chunk tail must not be added)
    w2 = w.copy()
    w2[m:] = 1e30
    assert abs(pairwise_sum(w2, np.empty(512), m) - want) <= bound


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"),
    reason="vector ISA check only for x86-64/aarch64",
)
def test_pairwise_sum_halvings_are_vectorized():
    """The reason the tree exists: its adds are vector adds (not timed)."""
    from numba import njit

    @njit
    def total(w, d):
        return pairwise_sum(w, d, w.size)

    total(np.ones(1024, np.float32), np.empty(512))
    llvm_ir = total.inspect_llvm(total.signatures[0])
    assert re.search(r"fadd <(2|4|8) x double>", llvm_ir), "halvings were not vectorized"


# --------------------------------------------------------------------------- mixed dims
def _three_reductions(x):
    loss = (x * x).mean()  # all dims
    cols = (x * 2).sum(0)  # dims (0,)
    rows = (x + 1).mean(1)  # dims (1,)
    return loss, cols, rows


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(3, 5), (1, 1), (130, 7), (150, 1900)])
def test_reductions_over_different_dims_share_one_loop(shape, dtype):
    """(150, 1900) runs in parallel over 3 blocks of rows (the last one short), two chunks
    per row, the second one short."""
    a = np.random.default_rng(sum(shape)).standard_normal(shape).astype(dtype)
    step = fusegrad.compile(_three_reductions)
    loss, cols, rows = step(fusegrad.tensor(a))
    a64 = a.astype(np.float64)
    rtol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(npy(loss), (a64 * a64).mean(), rtol=rtol)
    np.testing.assert_allclose(npy(cols), (a64 * 2).sum(0), rtol=rtol, atol=rtol * shape[0])
    np.testing.assert_allclose(npy(rows), (a64 + 1).mean(1), rtol=rtol, atol=rtol)
    plan = last_plan(step)
    assert plan.kernel_count() == 1, plan.describe()
    assert "reduce dims=(0, 1) + (0,) + (1,)" in plan.describe()
    # the CUDA renderer reduces over one set of dims per kernel: planned without mixing
    cuda_plan = fuse.plan(plan.graph, cpu=False)
    assert cuda_plan.kernel_count() == 3 and not any(s.by_rows for s in cuda_plan.steps)


def test_max_and_integer_reductions_do_not_mix():
    """Only float sums and means share a loop across dims: a max over rows or an integer sum
    never shares one with reductions over other dims."""

    def f(x):
        return x.sum(), (x * 2).amax(1), (x > 0).sum(0)

    a = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    step = fusegrad.compile(f)
    total, mx, pos = step(fusegrad.tensor(a))
    np.testing.assert_allclose(npy(total), a.astype(np.float64).sum(), rtol=1e-6)
    np.testing.assert_array_equal(npy(mx), (a * 2).max(1))
    np.testing.assert_array_equal(npy(pos), (a > 0).sum(0))
    loops = [p for s in last_plan(step).steps for p in (s.phases or [s]) if s.kind == "loop"]
    for loop in loops:  # (a row group may still run the max's loop row by row)
        kinds = {(n.op.lower, n.ins[0].dtype.is_floating_point) for n in loop.reductions}
        if kinds - {("sum", True), ("mean", True)}:
            assert len({fuse.red_dims(n) for n in loop.reductions}) == 1, last_plan(step).describe()


@pytest.mark.parametrize("shape", [(4, 6), (150, 1100)])
def test_layer_norm_gelu_step_is_eagers_in_fewer_passes(shape):
    """The benchmark's layernorm_gelu step: forward, backward and two SGD updates. The loss's
    mean, gamma's and beta's gradients (column sums) and a row sum of the backward share the
    gelu loop, and every loop over x's rows (mean, variance, scale, that loop, the rest of the
    backward) is one row group; values and every gradient are eager's."""
    R, C = shape
    rng = np.random.default_rng(R)
    init = {
        "x": rng.standard_normal((R, C)).astype(np.float32),
        "gamma": (1 + 0.1 * rng.standard_normal(C)).astype(np.float32),
        "beta": (0.1 * rng.standard_normal(C)).astype(np.float32),
    }

    def make():
        p = {k: nn.Parameter(fusegrad.tensor(v.copy())) for k, v in init.items()}
        opt_a = fusegrad.optim.SGD([p["gamma"], p["beta"]], lr=0.01 * C)
        opt_x = fusegrad.optim.SGD([p["x"]], lr=0.01 * R * C)

        def step():
            y = F.gelu(F.layer_norm(p["x"], (C,)) * p["gamma"] + p["beta"])
            loss = y.square().mean()
            opt_a.zero_grad()
            opt_x.zero_grad()
            loss.backward()
            opt_a.step()
            opt_x.step()
            return loss

        return p, step

    (pe, eager), (pc, compiled) = make(), make()
    compiled = fusegrad.compile(compiled)
    for _ in range(3):
        le, lc = eager().item(), compiled().item()
        assert lc == pytest.approx(le, rel=1e-5)
        for k in init:
            np.testing.assert_allclose(npy(pc[k].grad), npy(pe[k].grad), rtol=1e-4, atol=1e-7,
                                       err_msg=k)
            np.testing.assert_allclose(npy(pc[k]), npy(pe[k]), rtol=1e-5, atol=1e-6, err_msg=k)
    plan = last_plan(compiled)
    groups = [s for s in plan.steps if s.phases]
    assert [len(g.phases) for g in groups] == [7], plan.describe()
    dims = {fuse.red_dims(n) for n in groups[0].phases[3].reductions}
    assert dims == {(0, 1), (0,), (1,)} and len(groups[0].phases[3].reductions) == 4
    # loops: the row group (with x's update in its last loop), two clones of gamma's and
    # beta's grads (moved after the group); gamma's and beta's update
    assert plan.kernel_count() == 4, plan.describe()
    assert groups[0].phases[-1].nodes[-1].op.name == "sgd_step"


# --------------------------------------------------------------------------- row groups
def _normalize_rows(x, w):
    """A softmax-like row pipeline: row mean, centred square, row sum, [R, 1] scale, a
    weighted output and its row sum; every later loop reads row values of the earlier ones."""
    c = x - x.mean(1, keepdim=True)
    s = (c * c).sum(1, keepdim=True)
    inv = 1 / (s + 1)
    y = c * inv * w
    return y, y.sum(1), (y * y).mean()


@pytest.mark.parametrize("shape", [(2, 3), (70, 5), (300, 1500)])
def test_row_group_values_are_numpys(shape):
    rng = np.random.default_rng(shape[0])
    a = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal(shape[1]).astype(np.float32)
    step = fusegrad.compile(_normalize_rows)
    y, rows, total = step(fusegrad.tensor(a), fusegrad.tensor(w))
    a64, w64 = a.astype(np.float64), w.astype(np.float64)
    c = a64 - a64.mean(1, keepdims=True)
    y64 = c / ((c * c).sum(1, keepdims=True) + 1) * w64
    np.testing.assert_allclose(npy(y), y64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npy(rows), y64.sum(1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(npy(total), (y64 * y64).mean(), rtol=1e-5)
    plan = last_plan(step)
    assert plan.kernel_count() == 1 and len(plan.steps[0].phases) == 4, plan.describe()
    assert "4 loops run row by row in one kernel" in plan.describe()
    # without row groups and mixed reductions: two row reductions, the [R, 1] scale, the
    # weighted output with its row sum, and the mean over everything
    assert fuse.plan(plan.graph, cpu=False).kernel_count() == 5


def test_a_column_result_is_not_a_row_value():
    """x - x.mean(0) needs every row's x before any row can go on: two kernels, not a group
    (a group would read a column mean that is not complete yet)."""

    def f(x):
        c = x - x.mean(0)
        return (c * c).sum(1)

    a = np.random.default_rng(1).standard_normal((130, 9)).astype(np.float32)
    step = fusegrad.compile(f)
    out = step(fusegrad.tensor(a))
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(npy(out), ((a64 - a64.mean(0)) ** 2).sum(1), rtol=1e-5)
    plan = last_plan(step)
    assert plan.kernel_count() == 2 and not any(s.phases for s in plan.steps), plan.describe()


def test_a_step_between_row_loops_moves_after_the_group_unless_a_later_loop_reads_it():
    """A column sum's reshape between two row loops runs after the group; a row loop that
    reads a value computed between them starts a new kernel instead."""

    def moved(x):
        a = x * 2
        r = a.sum(1, keepdim=True)
        cols = a.sum(0).reshape(1, -1)  # an extern step between the two loops
        return cols, (a - r).sum(1)  # a second loop: it reads the row sum r

    def kept(x, w):
        a = x * 2
        r = a.sum(1, keepdim=True)
        v = (w * 3).reshape(1, -1)  # the second loop reads it: no group
        return (a - r + v).sum(1)

    a = np.random.default_rng(2).standard_normal((70, 6)).astype(np.float32)
    w = np.arange(6, dtype=np.float32)
    step = fusegrad.compile(moved)
    cols, b = step(fusegrad.tensor(a))
    np.testing.assert_allclose(npy(cols), (a * 2).sum(0, keepdims=True), rtol=1e-5)
    a2 = a.astype(np.float64) * 2
    np.testing.assert_allclose(npy(b), (a2 - a2.sum(1, keepdims=True)).sum(1), atol=1e-4)
    plan = last_plan(step)
    assert plan.steps[0].phases and plan.steps[1].kind == "extern", plan.describe()
    step = fusegrad.compile(kept)
    np.testing.assert_allclose(npy(step(fusegrad.tensor(a), fusegrad.tensor(w))),
                               (a2 - a2.sum(1, keepdims=True) + w * 3).sum(1), atol=1e-4)
    assert not any(s.phases for s in last_plan(step).steps), last_plan(step).describe()


# --------------------------------------------------------------------------- fused updates
def _raw_tensor_setup(make_opt, n=5000, seed=0):
    x0 = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    x = fusegrad.tensor(x0.copy(), requires_grad=True)
    return x, make_opt([x])


OPTS = {
    "sgd": lambda ps: fusegrad.optim.SGD(ps, lr=0.5),
    "momentum": lambda ps: fusegrad.optim.SGD(ps, lr=0.5, momentum=0.9, nesterov=True),
    "adam": lambda ps: fusegrad.optim.Adam(ps, lr=0.05, weight_decay=0.01),
}


@pytest.mark.parametrize("opt", list(OPTS))
def test_update_runs_in_the_loop_that_computes_its_gradient(opt):
    """The benchmark's elementwise step: x's gradient comes out of the loss's loop, so x's
    update (and its momentum buffer or Adam's moments) runs in that loop: one kernel."""

    def make():
        x, o = _raw_tensor_setup(OPTS[opt])

        def step():
            loss = ((fusegrad.tanh(x * 1.5 + 0.3) * x - 0.2) ** 2).mean()
            o.zero_grad()
            loss.backward()
            o.step()
            return loss

        return x, o, step

    (xe, oe, eager), (xc, oc, compiled) = make(), make()
    compiled = fusegrad.compile(compiled)
    for _ in range(4):
        assert compiled().item() == pytest.approx(eager().item(), rel=1e-5)
        np.testing.assert_allclose(npy(xc), npy(xe), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(npy(xc.grad), npy(xe.grad), rtol=1e-5, atol=1e-9)
    for k, v in oe.state[xe].items():  # momentum buffer, exp_avg, exp_avg_sq, step
        got, want = oc.state[xc][k], v
        if hasattr(want, "detach"):
            got, want = npy(got), npy(want)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, err_msg=k)
    plan = last_plan(compiled)
    assert plan.kernel_count() == 1, plan.describe()
    assert fuse.plan(plan.graph, cpu=False).kernel_count() == 2


def test_update_stays_out_of_the_loop_when_a_later_step_reads_the_old_values():
    """x.sum() after backward and before opt.step() reads x as it was: the update cannot run
    in the loop that computes x's gradient (that loop runs before the sum)."""

    def make():
        x, o = _raw_tensor_setup(OPTS["momentum"], n=300, seed=3)

        def step():
            loss = (x * x).sum()
            o.zero_grad()
            loss.backward()
            before = x.sum()
            o.step()
            return before

        return x, step

    (xe, eager), (xc, compiled) = make(), make()
    compiled = fusegrad.compile(compiled)
    for _ in range(3):
        assert compiled().item() == pytest.approx(eager().item(), rel=1e-5)
        np.testing.assert_allclose(npy(xc), npy(xe), rtol=1e-6)
    plan = last_plan(compiled)
    assert any(s.kind == "update" for s in plan.steps), plan.describe()


def test_cross_entropy_step_forms_row_groups_and_matches_eager():
    """An MLP with CrossEntropyLoss (the MNIST-like benchmark, smaller): a row loop that cannot
    join the current group (another width) starts the next one, so log-softmax's forward
    (exp, row sum, log, subtract) and its backward each become a row group."""

    def make():
        fusegrad.manual_seed(4)
        model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 7))
        opt = fusegrad.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss()

        def step(x, y):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        return model, step

    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 20)).astype(np.float32), rng.integers(0, 7, 40)
    (me, eager), (mc, compiled) = make(), make()
    compiled = fusegrad.compile(compiled)
    for _ in range(3):
        le = eager(fusegrad.tensor(x), fusegrad.tensor(y)).item()
        assert compiled(fusegrad.tensor(x), fusegrad.tensor(y)).item() == pytest.approx(le, rel=1e-5)
    for pe, pc in zip(me.parameters(), mc.parameters(), strict=True):
        np.testing.assert_allclose(npy(pc), npy(pe), rtol=1e-5, atol=1e-6)
    groups = [s for s in last_plan(compiled).steps if s.phases]
    assert len(groups) >= 2, last_plan(compiled).describe()


# --------------------------------------------------------------------------- random row programs
ROW_STEPS = [
    ("center", lambda h, p: h - h.mean(1, keepdim=True)),
    ("rms", lambda h, p: h / ((h * h).mean(1, keepdim=True) + 1.0).sqrt()),
    ("softmax", lambda h, p: h.softmax(-1) * 30.0),
    ("log_softmax", lambda h, p: h.log_softmax(dim=1) * 0.2),
    ("affine", lambda h, p: h * p["gamma"] + p["beta"]),
    ("tanh", lambda h, p: h.tanh() * 2.0),
    ("gelu", lambda h, p: F.gelu(h)),
    ("colcenter", lambda h, p: h - h.mean(0)),  # a column result: ends a row group
    ("rowsum*", lambda h, p: h * h.sum(1, keepdim=True) * 1e-3),
    ("layer_norm", lambda h, p: F.layer_norm(h, (h.shape[1],)) * p["gamma"]),
]


@pytest.mark.parametrize("seed", range(6))
def test_random_row_programs_compiled_match_eager(seed):
    """Chains of row-wise steps on a (300, 1030) tensor: parallel row blocks (the last one
    short), two chunks per row (the second short), row groups, mixed reductions and an SGD
    update of x in the last loop. Compiled float32 agrees with eager float32 as closely as
    eager float32 agrees with float64."""
    import random

    rng = random.Random(seed)
    program = [ROW_STEPS[rng.randrange(len(ROW_STEPS))] for _ in range(rng.randint(3, 6))]
    names = " -> ".join(n for n, _ in program)
    r = np.random.default_rng(seed)
    values = {"x": r.standard_normal((300, 1030)), "gamma": 1 + 0.1 * r.standard_normal(1030),
              "beta": 0.1 * r.standard_normal(1030)}

    def run(dt, compiled):
        p = {k: nn.Parameter(fusegrad.tensor(v.astype(dt))) for k, v in values.items()}
        opt = fusegrad.optim.SGD([p["x"]], lr=10.0)

        def step():
            h = p["x"]
            for _, f in program:
                h = f(h, p)
            loss = (h * h).mean() + h.mean() * 0.1
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss

        fn = fusegrad.compile(step) if compiled else step
        loss = fn()
        out = {"loss": np.asarray(loss.item()), "x": npy(p["x"])}
        out.update({f"grad {k}": npy(t.grad) for k, t in p.items() if t.grad is not None})
        return out

    ref, e32, c32 = run(np.float64, False), run(np.float32, False), run(np.float32, True)
    assert set(c32) == set(e32) == set(ref), names
    for key in ref:
        eager_err = float(np.max(np.abs(e32[key] - ref[key]), initial=0.0))
        np.testing.assert_allclose(c32[key], e32[key], rtol=1e-4, atol=4 * eager_err + 1e-6,
                                   err_msg=f"{key}: {names}")


# --------------------------------------------------------------------------- max / min
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_max_and_min_propagate_nan_as_eager_does(dtype):
    """A NaN anywhere in what is reduced gives NaN, as in numpy and PyTorch: row reductions on
    their own, inside a row group (softmax's max), and over a large 1-D tensor (parallel
    blocks). An accumulator written as max(acc, v) would drop a NaN that is not first."""
    a = np.random.default_rng(0).standard_normal((70, 9)).astype(dtype)
    a[3, 4] = a[10, 0] = a[20, 8] = np.nan
    big = np.random.default_rng(1).standard_normal(600_000).astype(dtype)
    big[400_000] = np.nan

    def f(x, y):
        soft = (x - x.amax(1, keepdim=True)).exp().sum(1)  # a row group with a row max
        return x.amax(1), x.amin(1), x.amax(0), soft, y.amax(), y.amin(), (y * 0).amax()

    step = fusegrad.compile(f)
    got = step(fusegrad.tensor(a), fusegrad.tensor(big))
    want = f(fusegrad.tensor(a), fusegrad.tensor(big))
    for g, w in zip(got, want, strict=True):  # NaN where eager has NaN (equal_nan)
        np.testing.assert_allclose(npy(g), npy(w), rtol=1e-6)
    assert np.isnan(npy(got[0])[[3, 10, 20]]).all() and np.isnan(npy(got[4])).item()
    assert any(s.phases for s in last_plan(step).steps), last_plan(step).describe()
