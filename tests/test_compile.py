"""fusegrad.compile against eager mode: the same program run twice on identical copies of the
model, optimizer and data (built from one numpy seed), once eagerly and once compiled, must
print the same numbers; plus the compiled function's counters (graphs, kernels, graph breaks),
explain(), verify, max_graphs and FUSEGRAD_DEBUG.

Kernel counts are written as ``kernels_compiled + kernel_hits`` of a graph's first run: that
is the number of fused loops the graph launches, whether each was compiled now, shared with a
graph compiled earlier in this process, or loaded from the on-disk cache.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import warnings

import numpy as np
import pytest

if not os.environ.get("FUSEGRAD_CACHE_DIR"):  # tests/conftest.py normally sets one per session
    os.environ["FUSEGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusegrad-test-cache-")

import fusegrad  # noqa: E402
import fusegrad.nn as nn  # noqa: E402
import fusegrad.optim as optim  # noqa: E402

HERE = os.path.basename(__file__)


# --------------------------------------------------------------------------- helpers
def npy(t) -> np.ndarray:
    return np.array(t.detach().numpy(), copy=True)


def init_params(model, seed: int) -> None:
    """Overwrite every parameter with values drawn from one numpy seed (Linear-like scale)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        bound = 1.0 / np.sqrt(p.shape[-1]) if p.dim() >= 2 else 0.1
        p.data.numpy()[...] = rng.uniform(-bound, bound, tuple(p.shape)).astype(np.float32)


def twins(make_model, make_opt, seed: int = 0):
    """Two identical (model, optimizer) setups: same architecture, weights from one seed."""
    out = []
    for _ in range(2):
        m = make_model()
        init_params(m, seed)
        out.append((m, make_opt(m.parameters())))
    return out


def data(seed: int, *shapes) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def T(a: np.ndarray):
    """A fresh tensor of a numpy array (each copy of a setup gets its own)."""
    return fusegrad.tensor(np.array(a, copy=True))


def train_step_fn(model, opt, loss_fn):
    def step(x, y):
        loss = loss_fn(model(x), y)  # TRAIN-STEP-LOSS
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    return step


def assert_params_close(m_eager, m_comp, rtol=1e-4, atol=1e-5):
    for (n, a), (_, b) in zip(m_eager.named_parameters(), m_comp.named_parameters(), strict=True):
        np.testing.assert_allclose(npy(b), npy(a), rtol=rtol, atol=atol, err_msg=n)


def launched(stats) -> int:
    return stats.kernels_compiled + stats.kernel_hits


def snap(stats) -> dict:
    return {k: getattr(stats, k) for k in
            ("calls", "graphs_compiled", "graph_hits", "kernels_compiled", "kernel_hits",
             "graph_breaks")}


class DynamicNet(nn.Module):
    """Seed 001: the middle layer is applied random.randint(0, 3) times per forward."""

    def __init__(self, D_in, H, D_out):
        super().__init__()
        self.input_linear = nn.Linear(D_in, H)
        self.middle_linear = nn.Linear(H, H)
        self.output_linear = nn.Linear(H, D_out)

    def forward(self, x):
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        return self.output_linear(h_relu)


def mse_setup(seed=0, in_f=10, out_f=3, lr=0.1, momentum=0.0):
    return twins(lambda: nn.Linear(in_f, out_f),
                 lambda ps: optim.SGD(ps, lr=lr, momentum=momentum), seed)


# --------------------------------------------------------------------------- seed 000
def seed_step(x):
    y = x + 2
    z = y * y * 3
    out = z.mean()
    out.backward()
    return out


def test_seed_autograd_step_values_and_kernel_count():
    x_e = fusegrad.ones(2, 2, requires_grad=True)
    out_e = seed_step(x_e)

    x = fusegrad.ones(2, 2, requires_grad=True)
    step = fusegrad.compile(seed_step)
    out = step(x)
    assert out.item() == 27.0 == out_e.item()
    np.testing.assert_array_equal(npy(x.grad), np.full((2, 2), 4.5, np.float32))
    np.testing.assert_array_equal(npy(x.grad), npy(x_e.grad))
    assert out.grad_fn is not None and out.grad_fn.name() == "MeanBackward0"
    s = step.stats
    assert (s.calls, s.graphs_compiled, s.graph_hits, s.graph_breaks) == (1, 1, 0, 0)
    # one loop: the forward (add -> mul -> mul -> mean) and the backward, which reads only the
    # (one-element) upstream gradient, not the mean, so it joins the forward's loop
    assert launched(s) == 1

    # second call: .grad exists now, so backward accumulates (another graph), as in eager
    seed_step(x_e)
    step(x)
    np.testing.assert_array_equal(npy(x.grad), np.full((2, 2), 9.0, np.float32))
    np.testing.assert_array_equal(npy(x.grad), npy(x_e.grad))
    assert step.stats.graphs_compiled == 2
    assert launched(step.stats) == 2  # one loop again, now also adding into .grad
    step(x)  # same structure as the second call: a graph hit, no kernel work
    assert step.stats.graph_hits == 1 and launched(step.stats) == 2
    np.testing.assert_array_equal(npy(x.grad), np.full((2, 2), 13.5, np.float32))


# --------------------------------------------------------------------------- kernel counts
def test_mse_step_kernel_count_and_values():
    (me, oe), (mc, oc) = mse_setup(seed=1)
    xs, ys = data(2, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn))
    for i in range(4):
        le = eager(T(xs), T(ys)).item()
        lc = step(T(xs), T(ys)).item()
        assert lc == pytest.approx(le, rel=1e-5), i
        if i == 0:
            # matmul is BLAS; one loop: bias add -> sub -> square -> mean, the loss's backward
            # and the bias grad's sum over the batch (a reduction over other dims, fused);
            # one update kernel for weight and bias
            assert launched(step.stats) == 2
    assert_params_close(me, mc)
    s = step.stats
    assert (s.calls, s.graphs_compiled, s.graph_hits, s.graph_breaks) == (4, 1, 3, 0)
    assert launched(s) == 2  # graph hits launch kernels but compile/load nothing
    for name in ("compile_seconds", "trace_seconds", "run_seconds"):
        assert isinstance(getattr(s, name), float) and getattr(s, name) >= 0.0
    assert s.compile_seconds > 0.0 and s.trace_seconds > 0.0 and s.run_seconds > 0.0


SGD_SHAPES = [(3, 4), (5,), (2, 6), (7,), (4, 2)]


def sgd_update_fn(opt):
    def update():
        opt.step()

    return update


def test_sgd_momentum_update_of_n_params_kernel_count():
    n = len(SGD_SHAPES)
    rng = np.random.default_rng(3)
    vals = [rng.standard_normal(s).astype(np.float32) for s in SGD_SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SGD_SHAPES] for _ in range(4)]
    pe = [nn.Parameter(T(v)) for v in vals]
    pc = [nn.Parameter(T(v)) for v in vals]
    oe = optim.SGD(pe, lr=0.05, momentum=0.9)
    oc = optim.SGD(pc, lr=0.05, momentum=0.9)
    step = fusegrad.compile(sgd_update_fn(oc))
    counts = []
    for k in range(4):
        for p, q, g in zip(pe, pc, grads[k], strict=True):
            p.grad, q.grad = T(g), T(g)
        oe.step()
        before = launched(step.stats)
        step()
        counts.append(launched(step.stats) - before)
        for p, q in zip(pe, pc, strict=True):
            np.testing.assert_allclose(npy(q), npy(p), rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(npy(oc.state[q]["momentum_buffer"]),
                                       npy(oe.state[p]["momentum_buffer"]), rtol=1e-6, atol=1e-7)
    # The whole group's update is one kernel. The first call creates the momentum buffers
    # (buf = grad), a graph of its own; the second records the steady-state update
    # (buf = momentum * buf + grad). From then on graph hits compile and load nothing.
    assert n == 5 and counts == [1, 1, 0, 0]
    assert (step.stats.graphs_compiled, step.stats.graph_hits) == (2, 2)


# --------------------------------------------------------------------------- seed 001
DYN = dict(D_in=1000, H=100, D_out=10, N=64)


def dynamic_setup(momentum=0.9, seed=5):
    pair = twins(lambda: DynamicNet(DYN["D_in"], DYN["H"], DYN["D_out"]),
                 lambda ps: optim.SGD(ps, lr=1e-4, momentum=momentum), seed)
    xs, ys = data(seed + 1, (DYN["N"], DYN["D_in"]), (DYN["N"], DYN["D_out"]))
    return pair, xs, ys


def test_dynamic_net_20_steps_compiled_matches_eager():
    ((me, oe), (mc, oc)), xs, ys = dynamic_setup(momentum=0.9)
    crit = nn.MSELoss(reduction="sum")
    eager = train_step_fn(me, oe, crit)
    step = fusegrad.compile(train_step_fn(mc, oc, crit))
    steps = 20
    random.seed(1234)
    depths = [random.randint(0, 3) for _ in range(steps)]
    random.seed(1234)
    le = [eager(T(xs), T(ys)).item() for _ in range(steps)]
    random.seed(1234)
    x, y = T(xs), T(ys)
    lc = [step(x, y).item() for _ in range(steps)]
    np.testing.assert_allclose(lc, le, rtol=1e-4)
    assert le[-1] < le[0]
    assert_params_close(me, mc, rtol=1e-3, atol=1e-5)
    # With momentum, the first call also creates the momentum buffers (buf = grad.clone()),
    # so its graph is a one-off "first-call graph"; every later call records the steady-state
    # graph of its depth. Graphs = 1 + distinct depths among calls 2..N.
    k = len(set(depths[1:]))
    s = step.stats
    assert s.graphs_compiled == 1 + k
    assert s.graph_hits == steps - s.graphs_compiled
    assert s.calls == steps and s.graph_breaks == 0


def test_dynamic_net_structure_counting_without_optimizer_state():
    # plain SGD keeps no state: N calls with K distinct depths compile exactly K graphs
    ((me, oe), (mc, oc)), xs, ys = dynamic_setup(momentum=0.0, seed=7)
    crit = nn.MSELoss(reduction="sum")
    eager = train_step_fn(me, oe, crit)
    step = fusegrad.compile(train_step_fn(mc, oc, crit))
    n = 12
    random.seed(99)
    depths = [random.randint(0, 3) for _ in range(n)]
    k = len(set(depths))
    assert k >= 3  # the seed makes this test meaningful
    random.seed(99)
    le = [eager(T(xs), T(ys)).item() for _ in range(n)]
    random.seed(99)
    lc = [step(T(xs), T(ys)).item() for _ in range(n)]
    np.testing.assert_allclose(lc, le, rtol=1e-4)
    assert step.stats.graphs_compiled == k
    assert step.stats.graph_hits == n - k
    # each new depth only adds copies of kernels an earlier depth already had (or one small
    # new loop): the depth-3 graph is not compiled from scratch
    assert step.stats.kernels_compiled <= launched(step.stats)


def test_graph_hits_follow_known_graphs_without_shape_rules_or_source_lookups(monkeypatch):
    # A cache hit replays the recording against the known graph: no op's shape rule runs and
    # no source line is looked up. Depths alternate so the tracer must switch between known
    # graphs that share a prefix (and fall off one when a depth is new).
    import fusegrad.trace as trace_mod

    ((me, oe), (mc, oc)), xs, ys = dynamic_setup(momentum=0.0, seed=5)
    crit = nn.MSELoss(reduction="sum")
    eager = train_step_fn(me, oe, crit)
    step = fusegrad.compile(train_step_fn(mc, oc, crit))
    depths = [1, 2, 1, 3, 2, 3, 1, 0, 0, 2]
    lookups = []
    real_site = trace_mod.user_site
    monkeypatch.setattr(trace_mod, "user_site", lambda: lookups.append(1) or real_site())
    le, lc, per_call = [], [], []
    for d in depths:
        monkeypatch.setattr(random, "randint", lambda a, b, d=d: d)
        le.append(eager(T(xs), T(ys)).item())
        before = len(lookups)
        lc.append(step(T(xs), T(ys)).item())
        per_call.append(len(lookups) - before)
    np.testing.assert_allclose(lc, le, rtol=1e-4)
    assert_params_close(me, mc)
    new = [d not in depths[:i] for i, d in enumerate(depths)]
    assert step.stats.graphs_compiled == sum(new)
    for d, is_new, n in zip(depths, new, per_call, strict=True):
        assert (n > 0) == is_new, (d, is_new, n)


def test_graph_breaks_follow_the_graphs_the_last_call_ran(monkeypatch):
    # a step with two graph breaks runs three graphs; on later calls each segment follows the
    # graph that the previous call ran at the same point, so nothing diverges
    import fusegrad.trace as trace_mod

    (me, oe), (mc, oc) = mse_setup(seed=21, momentum=0.9)
    xs, ys = data(22, (8, 10), (8, 3))

    def body(model, opt, x, y):
        pred = model(x)
        seen = pred.sum().item()  # graph break 1
        loss = nn.MSELoss()(pred, y)
        opt.zero_grad()
        loss.backward()
        norm = float(model.weight.grad.norm())  # graph break 2
        opt.step()
        return loss, seen, norm

    step = fusegrad.compile(lambda x, y: body(mc, oc, x, y))
    diverged = []
    real = trace_mod.Tracer._diverged
    monkeypatch.setattr(trace_mod.Tracer, "_diverged",
                        lambda self, match: diverged.append(1) or real(self, match))
    for i in range(5):
        before = len(diverged)
        want = body(me, oe, T(xs), T(ys))
        got = step(T(xs), T(ys))
        assert got[0].item() == pytest.approx(want[0].item(), rel=1e-5)
        assert got[1] == pytest.approx(want[1], rel=1e-5) and got[2] == pytest.approx(want[2], rel=1e-5)
        if i >= 2:  # (the momentum buffers' first call and the second call compile graphs)
            assert len(diverged) == before, i
    assert step.stats.graph_breaks == 10
    assert_params_close(me, mc)


# --------------------------------------------------------------------------- runtime inputs
def test_changing_lr_via_param_groups_does_not_recompile():
    (me, oe), (mc, oc) = mse_setup(seed=11, momentum=0.9)
    xs, ys = data(12, (16, 10), (16, 3))
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn))
    lrs = [0.1, 0.1, 0.05, 0.3, 0.001, 0.2]
    for i, lr in enumerate(lrs):
        for g in oe.param_groups:
            g["lr"] = lr
        for g in oc.param_groups:
            g["lr"] = lr
        le = eager(T(xs), T(ys)).item()
        lc = step(T(xs), T(ys)).item()
        assert lc == pytest.approx(le, rel=1e-5), i
        if i == 1:
            after_warmup = snap(step.stats)
            # first-call graph (momentum buffers created) + steady-state graph
            assert after_warmup["graphs_compiled"] == 2
    assert_params_close(me, mc)
    s = snap(step.stats)
    assert s["graphs_compiled"] == after_warmup["graphs_compiled"]
    assert s["kernels_compiled"] == after_warmup["kernels_compiled"]
    assert s["graph_hits"] == after_warmup["graph_hits"] + len(lrs) - 2


def _pow_step(x, p):
    return ((x.abs() + 1) ** p).sum()


EXPONENTS = [0.5, 1.5, 2.5, 0.75, 3]


def test_changing_exponent_gives_eagers_values():
    x = fusegrad.tensor(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4))
    step = fusegrad.compile(_pow_step)
    for p in EXPONENTS:
        assert step(x, p).item() == pytest.approx(_pow_step(x, p).item(), rel=1e-6)


def test_changing_exponent_does_not_recompile():
    x = fusegrad.tensor(np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4))
    step = fusegrad.compile(_pow_step)
    for p in EXPONENTS[:4]:  # all floats: the scalar's type stays the same
        step(x, p)
    assert step.stats.graphs_compiled == 1
    step(x, 2)  # exponents -1, 0, 1, 2, 3 compile to multiplications: part of the graph
    assert step.stats.graphs_compiled == 2


def test_changing_exponent_in_backward_does_not_recompile():
    # the backward of x ** p records x ** (p - 1): with p = 4.0 that is 3.0, still a runtime
    # exponent (not one of the static -1, 0, 1, 2, 3)
    w = fusegrad.tensor(np.linspace(0.5, 2.0, 6, dtype=np.float32), requires_grad=True)

    def f(p):
        w.grad = None
        (w ** p).sum().backward()
        return w.grad

    step = fusegrad.compile(f)
    for p in (2.5, 4.0, 1.5):
        np.testing.assert_allclose(npy(step(p)), p * npy(w) ** (p - 1), rtol=1e-5)
    assert step.stats.graphs_compiled == 1


def test_changing_batch_size_new_graph_zero_new_kernels_and_explain():
    (me, oe), (mc, oc) = mse_setup(seed=13)
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn))
    x64, y64 = data(14, (64, 10), (64, 3))
    x32, y32 = data(15, (32, 10), (32, 3))
    for xs, ys in ((x64, y64), (x64, y64)):
        assert step(T(xs), T(ys)).item() == pytest.approx(eager(T(xs), T(ys)).item(), rel=1e-5)
    before = snap(step.stats)
    assert before["graphs_compiled"] == 1
    assert step(T(x32), T(y32)).item() == pytest.approx(eager(T(x32), T(y32)).item(), rel=1e-5)
    after = snap(step.stats)
    assert after["graphs_compiled"] == before["graphs_compiled"] + 1
    assert after["kernels_compiled"] == before["kernels_compiled"]  # kernels are size-generic
    assert after["kernel_hits"] > before["kernel_hits"]
    assert_params_close(me, mc)
    text = step.explain()
    assert "(64, 10) -> (32, 10)" in text, text
    line = re.search(r"input \d+ shape \(64, 10\) -> \(32, 10\).*", text)
    assert line, text
    assert f"{HERE}:{_line_of('TRAIN-STEP-LOSS')}" in line.group(0)  # the user's source line
    assert "2 graphs compiled" in text
    assert "hint" not in text
    # a third batch size: still no new kernel, and explain() now suggests bucketing
    x16, y16 = data(16, (16, 10), (16, 3))
    assert step(T(x16), T(y16)).item() == pytest.approx(eager(T(x16), T(y16)).item(), rel=1e-5)
    assert step.stats.kernels_compiled == before["kernels_compiled"]
    text = step.explain()
    assert "(64, 10) -> (16, 10)" in text, text
    assert "hint:" in text and "bucket" in text, text


# --------------------------------------------------------------------------- Adam / AdamW
@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.Adam(ps, lr=0.01),
    lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.1),
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.05),
], ids=["Adam", "Adam-wd", "AdamW"])
def test_adam_and_adamw_compiled_match_eager(make_opt):
    (me, oe), (mc, oc) = twins(lambda: nn.Linear(10, 3), make_opt, seed=21)
    xs, ys = data(22, (16, 10), (16, 3))
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn))
    for i in range(5):
        le = eager(T(xs), T(ys)).item()
        lc = step(T(xs), T(ys)).item()
        assert lc == pytest.approx(le, rel=1e-5), i
    assert_params_close(me, mc, rtol=1e-5, atol=1e-6)
    for p, q in zip(me.parameters(), mc.parameters(), strict=True):
        se, sc = oe.state[p], oc.state[q]
        assert sc["step"] == se["step"] == 5
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(npy(sc[key]), npy(se[key]), rtol=1e-5, atol=1e-8)
    # Adam creates exp_avg/exp_avg_sq eagerly (zeros_like: realized arrays, graph inputs), so
    # unlike SGD-momentum there is no first-call graph; the step count and the bias
    # corrections are runtime scalars: one graph for all five steps.
    assert step.stats.graphs_compiled == 1
    assert step.stats.graph_hits == 4


# --------------------------------------------------------------------------- identity
@pytest.mark.parametrize("set_to_none", [True, False])
def test_parameters_grads_and_state_keep_identity(set_to_none):
    (me, oe), (mc, oc) = mse_setup(seed=31, momentum=0.9)
    xs, ys = data(32, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()

    def make(model, opt):
        def step(x, y):
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=set_to_none)
            loss.backward()
            opt.step()
            return loss
        return step

    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    eager(T(xs), T(ys))
    step(T(xs), T(ys))  # first call creates .grad and the momentum buffers
    params = list(mc.parameters())
    w = mc.weight
    arrays = [p.data.numpy() for p in params]
    bufs = [oc.state[p]["momentum_buffer"] for p in params]
    buf_arrays = [b.numpy() for b in bufs]
    grads = [p.grad for p in params]
    grad_arrays = [g.numpy() for g in grads]
    for _ in range(3):
        eager(T(xs), T(ys))
        step(T(xs), T(ys))
    assert list(mc.parameters()) == params and all(a is b for a, b in zip(mc.parameters(), params))
    assert mc.weight is w
    for p, a in zip(params, arrays, strict=True):
        assert p.data.numpy() is a  # updated in place, same numpy array
    for p, b, ba in zip(params, bufs, buf_arrays, strict=True):
        assert oc.state[p]["momentum_buffer"] is b
        assert b.numpy() is ba
    if not set_to_none:  # zero_() then accumulate: the same grad tensor and array
        for p, g, ga in zip(params, grads, grad_arrays, strict=True):
            assert p.grad is g
            assert p.grad.numpy() is ga
    # the references the user held see eager's values
    for pe, a in zip(me.parameters(), arrays, strict=True):
        np.testing.assert_allclose(a, npy(pe), rtol=1e-5, atol=1e-6)
    for pe, ba in zip(me.parameters(), buf_arrays, strict=True):
        np.testing.assert_allclose(ba, npy(oe.state[pe]["momentum_buffer"]), rtol=1e-5, atol=1e-6)
    for pe, pc in zip(me.parameters(), params, strict=True):
        np.testing.assert_allclose(npy(pc.grad), npy(pe.grad), rtol=1e-5, atol=1e-6)
    assert arrays[0].flags.writeable


# --------------------------------------------------------------------------- graph breaks
def _break_item(model, opt, loss_fn, x, y, log):
    loss = loss_fn(model(x), y)
    log.append(loss.item())  # break
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _break_if(model, opt, loss_fn, x, y, log):
    loss = loss_fn(model(x), y)
    if loss > 0:  # break
        loss = loss * 2
    else:
        loss = loss * 3
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _break_print(model, opt, loss_fn, x, y, log):
    pred = model(x)
    print(pred[:2])  # break
    loss = loss_fn(pred, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _break_numpy(model, opt, loss_fn, x, y, log):
    pred = model(x)
    arr = pred.detach().numpy()  # break
    log.append(arr.copy())
    scale = fusegrad.tensor(np.float32(1.0 + np.abs(arr).mean()))
    loss = loss_fn(pred * scale, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def _break_tolist(model, opt, loss_fn, x, y, log):
    pred = model(x)
    rows = pred.detach().tolist()  # break
    log.append(rows)
    k = 1 + sum(1 for r in rows if r[0] > 0)  # a Python int from the data feeds arithmetic
    loss = loss_fn(pred, y) * k
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("fn", [_break_item, _break_if, _break_print, _break_numpy, _break_tolist],
                         ids=["item", "if", "print", "numpy", "tolist"])
def test_graph_breaks_give_eager_values(fn, capsys):
    (me, oe), (mc, oc) = mse_setup(seed=41, momentum=0.9)
    xs, ys = data(42, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()
    log_e, log_c = [], []
    step = fusegrad.compile(lambda x, y: fn(mc, oc, loss_fn, x, y, log_c))
    calls = 3
    for i in range(calls):
        le = fn(me, oe, loss_fn, T(xs), T(ys), log_e).item()
        out_e = capsys.readouterr().out
        lc = step(T(xs), T(ys)).item()
        out_c = capsys.readouterr().out
        assert lc == pytest.approx(le, rel=1e-5), i
        assert out_c == out_e
    assert_params_close(me, mc)
    assert len(log_c) == len(log_e)
    for a, b in zip(log_c, log_e, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert step.stats.graph_breaks == calls  # one break per call
    if fn is _break_print:
        assert out_c.startswith("tensor([["), out_c  # printed real values, like eager


def seed_vjp(x):
    y = x * 2
    while y.data.norm() < 1000:  # a graph break per test
        y = y * 2
    v = fusegrad.tensor([0.1, 1.0, 0.0001], dtype=fusegrad.float)
    y.backward(v)
    return y


def test_seed_vjp_while_loop_under_compile():
    fusegrad.manual_seed(3)
    xv = fusegrad.randn(3).numpy().copy()
    x_e = fusegrad.tensor(xv, requires_grad=True)
    y_e = seed_vjp(x_e)
    x_c = fusegrad.tensor(xv, requires_grad=True)
    step = fusegrad.compile(seed_vjp)
    y_c = step(x_c)
    np.testing.assert_array_equal(npy(y_c), npy(y_e))
    np.testing.assert_array_equal(npy(x_c.grad), npy(x_e.grad))
    factor = float(npy(y_e)[0] / xv[0])  # 2 ** (doublings + 1)
    doublings = round(np.log2(factor)) - 1
    assert doublings >= 3
    np.testing.assert_allclose(npy(x_c.grad), np.array([0.1, 1.0, 0.0001], np.float32) * factor,
                               rtol=1e-6)
    # every loop test realizes the pending graph (x*2 or y*2, then norm and <)
    assert step.stats.graph_breaks == doublings + 1
    assert y_c.grad_fn is not None and y_c.grad_fn.name() == "MulBackward0"


# --------------------------------------------------------------------------- errors
def test_function_raising_midway_applies_recorded_state_and_stays_usable():
    (me, oe), (mc, oc) = mse_setup(seed=51, momentum=0.9)
    xs, ys = data(52, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()

    def make(model, opt):
        def step(x, y, where):
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            if where == "after_backward":
                raise ValueError("boom after backward")
            opt.step()
            if where == "after_step":
                raise ValueError("boom after step")
            return loss
        return step

    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    for where in ("none", "after_step", "after_backward", "none", "after_step", "none"):
        if where == "none":
            assert step(T(xs), T(ys), where).item() == pytest.approx(
                eager(T(xs), T(ys), where).item(), rel=1e-5)
        else:
            with pytest.raises(ValueError, match="boom") as ee:
                eager(T(xs), T(ys), where)
            with pytest.raises(ValueError, match="boom") as ec:
                step(T(xs), T(ys), where)
            assert str(ec.value) == str(ee.value)
        assert_params_close(me, mc)
        for pe, pc in zip(me.parameters(), mc.parameters(), strict=True):
            np.testing.assert_allclose(npy(pc.grad), npy(pe.grad), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(npy(oc.state[pc]["momentum_buffer"]),
                                       npy(oe.state[pe]["momentum_buffer"]), rtol=1e-5, atol=1e-6)
    assert step.stats.calls == 6


def _line_of(marker: str) -> int:
    with open(__file__, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if marker in line and "_line_of" not in line:
                return i
    raise AssertionError(marker)


def _shape_error_fn(x, w):
    h = (x * 2).relu()
    return (h @ w).sum()  # SHAPE-ERROR-LINE


def test_shape_error_inside_compile_is_eagers_runtime_error():
    x = fusegrad.tensor(np.ones((4, 3), np.float32), requires_grad=True)
    w_bad = fusegrad.tensor(np.ones((5, 2), np.float32))
    with pytest.raises(RuntimeError) as ee:
        _shape_error_fn(x, w_bad)
    step = fusegrad.compile(_shape_error_fn)
    with pytest.raises(RuntimeError) as ec:
        step(x, w_bad)
    assert type(ec.value) is type(ee.value)
    assert str(ec.value) == str(ee.value)
    msg = str(ec.value)
    assert "matmul" in msg or "mm" in msg, msg
    assert f"{HERE}:{_line_of('SHAPE-ERROR-LINE')}" in msg, msg
    # the compiled function is still usable
    w = fusegrad.tensor(np.full((3, 2), 0.5, np.float32))
    assert step(x, w).item() == pytest.approx(_shape_error_fn(x, w).item())


_lin53 = nn.Linear(5, 3)
_leaf = fusegrad.ones(3, requires_grad=True)


def _err_linear(x):
    return _lin53(x)  # ERR-LINEAR


def _err_inplace_leaf(x):
    y = x * 2
    _leaf.add_(1)  # ERR-INPLACE
    return y


def _err_nonscalar_backward(x):
    y = x * 2
    y.backward()  # ERR-BACKWARD
    return y


@pytest.mark.parametrize("fn, marker, words", [
    (_err_linear, "ERR-LINEAR", "Linear"),
    (_err_inplace_leaf, "ERR-INPLACE", "leaf Variable"),
    (_err_nonscalar_backward, "ERR-BACKWARD", "scalar outputs"),
], ids=["linear-size", "inplace-leaf", "nonscalar-backward"])
def test_eager_errors_are_the_same_under_compile(fn, marker, words):
    x = fusegrad.ones(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError) as ee:
        fn(x)
    step = fusegrad.compile(fn)
    with pytest.raises(RuntimeError) as ec:
        step(x)
    assert type(ec.value) is type(ee.value)
    assert str(ec.value) == str(ee.value)
    assert words in str(ec.value)
    assert f"{HERE}:{_line_of(marker)}" in str(ec.value)
    assert x.grad is None and npy(_leaf).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(RuntimeError):  # and again: nothing stuck in a half-traced state
        step(x)


# --------------------------------------------------------------------------- verify, explain
def test_verify_true_passes_on_the_first_call_of_a_correct_step():
    (me, oe), (mc, oc) = mse_setup(seed=61, momentum=0.9)
    xs, ys = data(62, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn), verify=True)
    for _ in range(2):  # two calls, two graphs (first-call graph, steady-state graph)
        assert step(T(xs), T(ys)).item() == pytest.approx(eager(T(xs), T(ys)).item(), rel=1e-5)
    assert step.stats.graphs_compiled == 2 and step.stats.graph_hits == 0
    assert_params_close(me, mc)


def test_verify_true_passes_on_a_correct_step():
    (me, oe), (mc, oc) = mse_setup(seed=61, momentum=0.9)
    xs, ys = data(62, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn), verify=True)
    for _ in range(4):
        assert step(T(xs), T(ys)).item() == pytest.approx(eager(T(xs), T(ys)).item(), rel=1e-5)
    assert step.stats.graph_hits == 2
    assert_params_close(me, mc)


def test_verify_graph_hit_with_new_input_values_minimal():
    # regression: _check once compared a graph hit with the compiling call's eager values
    f = fusegrad.compile(lambda x: (x * 2).sum(), verify=True)
    assert f(fusegrad.ones(3)).item() == 6.0
    assert f(fusegrad.zeros(3)).item() == 0.0


def _chain(x, w, k):
    y = x
    for _ in range(k):
        y = y @ w
    return y.sum()


def test_max_graphs_evicts_with_one_recompile_warning():
    rng = np.random.default_rng(71)
    x = T(rng.standard_normal((2, 3)).astype(np.float32))
    w = T(rng.standard_normal((3, 3)).astype(np.float32) * 0.5)
    step = fusegrad.compile(_chain, max_graphs=2)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for k in (1, 2, 1, 3, 4, 1, 2):
            assert step(x, w, k).item() == pytest.approx(_chain(x, w, k).item(), rel=1e-6)
    got = [r for r in rec if issubclass(r.category, fusegrad.RecompileWarning)]
    assert len(got) == 1, [str(r.message) for r in rec]
    assert "max_graphs=2" in str(got[0].message)
    assert "graphs compiled" in str(got[0].message)  # carries the explain() text
    assert got[0].filename == __file__  # points at the caller's line
    # 1, 2, (1 hit), 3 evicts 2, 4 evicts 1, 1 recompiles (evicts 3), 2 recompiles (evicts 4)
    assert step.stats.graphs_compiled == 6
    assert step.stats.graph_hits == 1
    assert len(step.graphs) == 2


def test_debug_level_1_prints_new_graphs(monkeypatch, capsys):
    monkeypatch.setenv("FUSEGRAD_DEBUG", "1")
    x = fusegrad.ones(2, 2, requires_grad=True)
    step = fusegrad.compile(seed_step)
    step(x)
    out = capsys.readouterr().out
    assert "new graph #1" in out and "seed_step" in out, out
    assert "kernels" in out
    step(x)  # accumulating into x.grad: a new graph, and it says what differs
    out = capsys.readouterr().out
    assert "new graph #2" in out, out
    step(x)  # a hit: nothing printed
    assert "new graph" not in capsys.readouterr().out
    monkeypatch.setenv("FUSEGRAD_DEBUG", "3")  # + graphs, fusion groups, generated source
    fusegrad.compile(seed_step)(fusegrad.ones(2, 2, requires_grad=True))
    out = capsys.readouterr().out
    assert "new graph #1" in out and "fusion groups" in out and "@njit" in out, out
    assert f"{HERE}:" in out  # graph lines carry the user's source lines
    monkeypatch.setenv("FUSEGRAD_DEBUG", "0")
    fusegrad.compile(seed_step)(fusegrad.ones(2, 2, requires_grad=True))
    assert "[fusegrad]" not in capsys.readouterr().out


# --------------------------------------------------------------------------- other functions
def test_compile_plain_inference_function():
    (me, _), (mc, _) = mse_setup(seed=81)
    (xs,) = data(82, (8, 10))

    def make(model):
        def infer(x):
            with fusegrad.no_grad():
                return model(x).relu()
        return infer

    def make_grad_mode(model):
        def infer(x):
            return model(x).sigmoid() * 2
        return infer

    for mk in (make, make_grad_mode):
        step = fusegrad.compile(mk(mc))
        for _ in range(3):
            ye, yc = mk(me)(T(xs)), step(T(xs))
            np.testing.assert_allclose(npy(yc), npy(ye), rtol=1e-6, atol=1e-7)
            assert yc.requires_grad == ye.requires_grad
        assert step.stats.graphs_compiled == 1 and step.stats.graph_hits == 2
        assert all(p.grad is None for p in mc.parameters())
    assert_params_close(me, mc, rtol=0, atol=0)


def test_compile_function_calling_autograd_grad():
    (me, _), (mc, _) = mse_setup(seed=83)
    xs, ys = data(84, (8, 10), (8, 3))

    def make(model):
        def grads(x, y):
            loss = ((model(x) - y) ** 2).mean()
            gw, gb = fusegrad.autograd.grad(loss, [model.weight, model.bias])
            xr = x.detach().requires_grad_(True)
            (gx,) = fusegrad.autograd.grad((xr * xr * 3).sum(), xr)
            return loss, gw, gb, gx
        return grads

    step = fusegrad.compile(make(mc))
    for _ in range(2):
        e, c = make(me)(T(xs), T(ys)), step(T(xs), T(ys))
        for a, b in zip(e, c, strict=True):
            np.testing.assert_allclose(npy(b), npy(a), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npy(c[3]), 6 * xs, rtol=1e-6)
    assert all(p.grad is None for p in mc.parameters())  # autograd.grad leaves .grad alone
    assert step.stats.graphs_compiled == 1


# --------------------------------------------------------------------------- randomness
class NoisyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(10, 6)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        noise = fusegrad.randn(*x.shape) * 0.1
        gate = fusegrad.rand(x.shape[0], 1)
        return self.drop(self.lin(x + noise)) * gate, noise, gate


def test_randomness_same_seed_same_numbers_and_no_new_graphs():
    (me, oe), (mc, oc) = twins(NoisyNet, lambda ps: optim.SGD(ps, lr=0.1), seed=91)
    (xs,) = data(92, (8, 10))

    def make(model, opt):
        def step(x):
            h, noise, gate = model(x)
            loss = (h * h).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss, h, noise, gate
        return step

    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    fusegrad.manual_seed(0)
    res_e = [[npy(t) for t in eager(T(xs))] for _ in range(4)]
    after_e = fusegrad.rand(3).numpy().copy()
    fusegrad.manual_seed(0)
    res_c = [[npy(t) for t in step(T(xs))] for _ in range(4)]
    after_c = fusegrad.rand(3).numpy().copy()
    np.testing.assert_array_equal(after_c, after_e)  # the generator advanced identically
    for (le, he, ne, ge), (lc, hc, nc, gc) in zip(res_e, res_c, strict=True):
        np.testing.assert_array_equal(nc, ne)  # the same random numbers
        np.testing.assert_array_equal(gc, ge)
        np.testing.assert_array_equal(hc == 0, he == 0)  # the same dropout mask
        np.testing.assert_allclose(hc, he, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(lc, le, rtol=1e-5)
    assert not np.array_equal(res_c[0][2], res_c[1][2])  # fresh numbers each call ...
    assert step.stats.graphs_compiled == 1  # ... and no new graph for them
    assert step.stats.graph_hits == 3
    assert_params_close(me, mc)


# --------------------------------------------------------------------------- reductions
@pytest.mark.parametrize("fn", [
    pytest.param(lambda x: (x * 2).sum(dim=0), id="sum0"),
    pytest.param(lambda x: (x * 2).mean(dim=0), id="mean0"),
    pytest.param(lambda x: (x * 2).amax(dim=1), id="amax1"),
    pytest.param(lambda x: (x > 3).all(dim=1), id="all1"),
    pytest.param(lambda x: (x * 2).long().amax(dim=0), id="int-amax0"),
    pytest.param(lambda x: (x * 2).amax(dim=0), id="amax0"),
    pytest.param(lambda x: (x * 2).max(dim=0)[0], id="max0"),
    pytest.param(lambda x: (x * 2).amin(dim=0), id="amin0"),
    pytest.param(lambda x: (x * 2).reshape(3, 2, 2).amax(dim=1), id="amax-middle"),
    pytest.param(lambda x: (x > 3).any(dim=0), id="any0"),
    pytest.param(lambda x: (x > 3).all(dim=0), id="all0"),
])
def test_reductions_over_any_dim_compiled_match_eager(fn):
    x = fusegrad.tensor(np.arange(12, dtype=np.float32).reshape(3, 4) - 5)
    want = fn(x)
    got = fusegrad.compile(fn)(x)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(npy(got), npy(want))


@pytest.mark.parametrize("shape,dim", [((5, 2051), 1), ((3, 7), 1), ((300_003,), 0), ((2, 3, 1030), (1, 2))],
                         ids=["rows-2051", "rows-7", "parallel-1d", "two-dims"])
@pytest.mark.parametrize("body", ["light", "heavy", "int", "max", "any"])
def test_long_reductions_compiled_match_eager(shape, dim, body):
    # Reductions whose innermost dim is reduced are unrolled into four partial sums (light
    # loops) or run in chunks through a buffer (loops that call math functions): remainders
    # (lengths not divisible by 4 or by the chunk), a parallel 1-D reduction, two reduced dims.
    fns = {
        "light": lambda x: (x * 2 - 1).sum(dim=dim),
        "heavy": lambda x: (x.tanh() * x.exp()).mean(dim=dim),
        "int": lambda x: (x * 3).long().sum(dim=dim),
        "max": lambda x: (x.sigmoid() - x).amax(dim=dim),
        "any": lambda x: (x * 2 > 7.5).any(dim=dim),
    }
    fn = fns[body]
    x = fusegrad.tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    want, got = fn(x), fusegrad.compile(fn)(x)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=2e-5, atol=1e-4)


def test_parallel_full_reduction_does_not_depend_on_the_thread_count():
    # A large 1-D mean runs in blocks on all threads; the block partials are added in order.
    import numba

    x = fusegrad.tensor(np.random.default_rng(1).standard_normal(700_001).astype(np.float32))
    f = fusegrad.compile(lambda x: (x.tanh() * 3 + x).mean())
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = f(x).item()
        numba.set_num_threads(before)
        assert f(x).item() == one
    finally:
        numba.set_num_threads(before)
    assert one == pytest.approx(float(np.mean(np.tanh(x.numpy().astype(np.float64)) * 3 + x.numpy())), rel=1e-5)


def test_training_step_with_max_over_the_batch_compiled_matches_eager():
    (me, oe), (mc, oc) = mse_setup(seed=95)
    xs, ys = data(96, (8, 10), (8, 3))

    def make(model, opt):
        def step(x, y):
            pooled = model(x).amax(dim=0)  # max over the batch
            loss = ((pooled - y[0]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return step

    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    for _ in range(3):
        assert step(T(xs), T(ys)).item() == pytest.approx(eager(T(xs), T(ys)).item(), rel=1e-5)
    assert_params_close(me, mc)


# --------------------------------------------------------------------------- fallback
def test_fallback_eager_runs_a_graph_that_fails_to_compile(monkeypatch):
    import fusegrad.fuse as fuse

    real_plan = fuse.plan

    def failing_plan(graph):  # the compiler breaks on this graph (injected)
        raise fusegrad.CompileError("injected: Numba could not compile kernel fg_test")

    (me, oe), (mc, oc) = mse_setup(seed=97, momentum=0.9)
    xs, ys = data(98, (8, 10), (8, 3))
    loss_fn = nn.MSELoss()
    eager = train_step_fn(me, oe, loss_fn)
    step = fusegrad.compile(train_step_fn(mc, oc, loss_fn), fallback="eager")
    strict = fusegrad.compile(seed_step)
    monkeypatch.setattr(fuse, "plan", failing_plan)
    with pytest.raises(fusegrad.CompileError, match="injected"):  # default: the error surfaces
        strict(fusegrad.ones(2, 2, requires_grad=True))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            assert step(T(xs), T(ys)).item() == pytest.approx(eager(T(xs), T(ys)).item(),
                                                              rel=1e-5)
    got = [r for r in rec if "fallback" in str(r.message)]
    assert len(got) == 1 and issubclass(got[0].category, RuntimeWarning)  # warned once
    assert_params_close(me, mc)
    # the failing graphs (the momentum buffers' first call, then the steady state) were
    # planned once each, not on every call
    assert step.stats.graphs_compiled == 2 and step.stats.graph_hits == 1
    monkeypatch.setattr(fuse, "plan", real_plan)
    assert step(T(xs), T(ys)).item() == pytest.approx(eager(T(xs), T(ys)).item(), rel=1e-5)
    assert_params_close(me, mc)
    assert step.stats.graphs_compiled == 2  # a graph that failed stays eager
