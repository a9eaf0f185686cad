"""Multi-tensor update ops (``sgd_step``, ``adam_step``): compiled == eager, one kernel a group.

test_optim.py checks the eager optimizers against PyTorch's formulas; here the same steps run
under ``fusegrad.compile`` and must give eager's values bit for bit (the compiled kernel copies
the op's element function, so both run the same float operations in the same order).
"""

from __future__ import annotations

import numpy as np
import pytest

import fusegrad
import fusegrad.nn as nn
import fusegrad.optim as optim
from fusegrad.ops import REGISTRY

SHAPES = [(3, 4), (5,), (2, 3, 2), ()]
CONFIGS = [
    ("SGD", dict(lr=0.1), "sgd_step"),
    ("SGD", dict(lr=0.1, momentum=0.9), "sgd_step"),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1), "sgd_step"),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True), "sgd_step"),
    ("Adam", dict(lr=0.05), "adam_step"),
    ("Adam", dict(lr=0.05, betas=(0.3, 0.9), weight_decay=0.1), "adam_step"),
    ("Adam", dict(lr=0.05, amsgrad=True, maximize=True), "adam_step"),
    ("AdamW", dict(lr=0.05, weight_decay=0.1, amsgrad=True), "adam_step"),
]


def test_every_update_op_is_covered():
    updates = {n for n, op in REGISTRY.items() if op.kind == "update"}
    assert updates == {op for _, _, op in CONFIGS}


def _params(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    vals = [rng.standard_normal(s).astype(dtype) for s in shapes]
    return [nn.Parameter(fusegrad.tensor(v.copy())) for v in vals], [
        nn.Parameter(fusegrad.tensor(v.copy())) for v in vals
    ]


def _grads(dtype, shapes, steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]


def _run(name, cfg, dtype, shapes=SHAPES, steps=4):
    pe, pc = _params(dtype, shapes)
    oe = getattr(optim, name)(pe, **cfg)
    oc = getattr(optim, name)(pc, **cfg)
    step = fusegrad.compile(lambda: oc.step())
    launches = []
    for grads in _grads(dtype, shapes, steps):
        for p, q, g in zip(pe, pc, grads, strict=True):
            p.grad, q.grad = fusegrad.tensor(g.copy()), fusegrad.tensor(g.copy())
        oe.step()
        before = step.stats.kernels_compiled + step.stats.kernel_hits
        step()
        launches.append(step.stats.kernels_compiled + step.stats.kernel_hits - before)
        for p, q in zip(pe, pc, strict=True):
            np.testing.assert_array_equal(q.detach().numpy(), p.detach().numpy())
            for key, v in oe.state[p].items():
                w = oc.state[q][key]
                if isinstance(v, fusegrad.Tensor):
                    np.testing.assert_array_equal(w.numpy(), v.numpy(), err_msg=key)
                else:
                    assert w == v, key
    return step, launches


@pytest.mark.parametrize("name,cfg,op", CONFIGS, ids=[f"{n}-{c}" for n, c, _ in CONFIGS])
def test_compiled_update_equals_eager_float64(name, cfg, op):
    step, launches = _run(name, cfg, np.float64)
    # one kernel per graph: a first-step graph (state created) and the steady-state graph
    # (plain SGD keeps no state, so its first graph is the steady one)
    assert launches[0] == 1 and launches[2:] == [0, 0]
    assert step.stats.graphs_compiled == (1 if launches[1] == 0 else 2)
    assert step.stats.graph_hits == 4 - step.stats.graphs_compiled


@pytest.mark.parametrize("name,cfg,op", [CONFIGS[1], CONFIGS[5]], ids=["SGD-momentum", "Adam-wd"])
def test_compiled_update_equals_eager_float32(name, cfg, op):
    _run(name, cfg, np.float32)


def test_large_parameter_update_runs_in_parallel_and_equals_eager():
    # above codegen.PARALLEL_MIN elements the update loop is a prange
    step, _ = _run("Adam", dict(lr=0.01), np.float32, shapes=[(1024, 300), (7,)], steps=3)
    ex = next(iter(step.graphs.values()))
    (src,) = [s for _, _, s in ex.sources]
    assert "prange" in src and "parallel=True" in src


def test_update_reads_weights_written_earlier_in_the_same_step():
    # a value read after the update (in the same graph) sees the new weights, as in eager
    def run(compiled):
        (p,), _ = _params(np.float32, [(4,)], seed=3)
        opt = optim.SGD([p], lr=0.5, momentum=0.5)

        def f():
            loss = (p * p).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return p * 2.0 + 1.0

        f = fusegrad.compile(f) if compiled else f
        return [f().detach().numpy().copy() for _ in range(3)], p.detach().numpy().copy()

    (out_e, p_e), (out_c, p_c) = run(False), run(True)
    np.testing.assert_array_equal(p_c, p_e)
    for a, b in zip(out_c, out_e, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_parameter_update_under_compile_is_a_clear_error():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    p = nn.Parameter(fusegrad.tensor(base.copy()))
    p.data = fusegrad.from_numpy(np.asfortranarray(base))
    p.grad = fusegrad.ones(3, 4)
    opt = optim.SGD([p], lr=0.1)
    step = fusegrad.compile(lambda: opt.step())
    with pytest.raises(RuntimeError, match=r"sgd_step: the param of parameter 0 is written in place but has strides.*contiguous"):
        step()
    opt.step()  # eager mode writes through the strides
    np.testing.assert_allclose(p.detach().numpy(), base - 0.1)


def test_mismatched_grad_shape_names_the_op_and_the_parameter():
    from fusegrad.tensor import update

    p, g = nn.Parameter(fusegrad.zeros(3, 4)), fusegrad.zeros(4, 3)
    attrs = dict(n=1, maximize=False, decay=False, use_momentum=False, nesterov=False, first=(False,))
    with pytest.raises(RuntimeError, match=r"sgd_step: .*parameter 0: param\[3, 4\]:float32, grad\[4, 3\]"):
        update(REGISTRY["sgd_step"], (p, g, g, -0.1, 0.0, 1.0, 0.0), attrs)
    np.testing.assert_array_equal(p.detach().numpy(), np.zeros((3, 4), np.float32))


def test_mixed_dtypes_groups_and_skipped_grads_compiled_equal_eager():
    # float32 and float64 parameters in one group (scalars cast per parameter), two groups
    # with their own lr, and a parameter whose grad is missing on some steps (its Adam step
    # count falls behind: per-parameter bias corrections differ)
    rng = np.random.default_rng(7)
    vals = [rng.standard_normal((3, 2)).astype(np.float32), rng.standard_normal(4),
            rng.standard_normal((2, 2)).astype(np.float32)]

    def setup():
        ps = [nn.Parameter(fusegrad.tensor(v.copy())) for v in vals]
        opt = optim.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.3}], lr=0.05)
        return ps, opt

    (pe, oe), (pc, oc) = setup(), setup()
    step = fusegrad.compile(lambda: oc.step())
    for k in range(5):
        grads = [rng.standard_normal(v.shape).astype(v.dtype) for v in vals]
        for i, (p, q, g) in enumerate(zip(pe, pc, grads, strict=True)):
            skip = i == 1 and k % 2 == 1
            p.grad = None if skip else fusegrad.tensor(g.copy())
            q.grad = None if skip else fusegrad.tensor(g.copy())
        oe.step()
        step()
        for p, q in zip(pe, pc, strict=True):
            assert q.dtype == p.dtype
            np.testing.assert_array_equal(q.detach().numpy(), p.detach().numpy())
    assert oc.state[pc[1]]["step"] == 3.0 and oc.state[pc[0]]["step"] == 5.0


def test_parameter_written_again_after_an_update_in_the_same_call():
    # after opt.step() a parameter holds the update's new value (not a view of another tensor):
    # an in-place edit and a second step in the same compiled call must work as in eager
    def run(compiled):
        (p,), _ = _params(np.float32, [(3,)], seed=4)
        opt = optim.SGD([p], lr=0.1, momentum=0.9)

        def f():
            for _ in range(2):
                opt.zero_grad()
                (p * p).sum().backward()
                opt.step()
                with fusegrad.no_grad():
                    p.mul_(0.5)
            return p * 1

        f = fusegrad.compile(f) if compiled else f
        return [f().detach().numpy().copy() for _ in range(3)]

    for a, b in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(a, b)
