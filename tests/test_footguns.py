"""No frozen values: the silent footguns of capture-once JITs, each run eagerly and compiled.

A JIT that traces a function once and replays the capture freezes whatever Python decided
during that first call: the branch it took, the constants and closure variables it read, the
non-tensor arguments, the random numbers, the side effects. fusegrad.compile re-runs the Python
function on every call, so every one of these must give eager mode's results, call after call.
Each test runs the same program on two identical setups (one numpy seed), once eagerly and once
compiled, over several calls, and compares every call; where it matters it also checks that a
value which only feeds arithmetic did not cost a recompile.
"""

from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import pytest

if not os.environ.get("FUSEGRAD_CACHE_DIR"):  # tests/conftest.py normally sets one per session
    os.environ["FUSEGRAD_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusegrad-test-cache-")

import fusegrad  # noqa: E402
import fusegrad.nn as nn  # noqa: E402
import fusegrad.optim as optim  # noqa: E402


# --------------------------------------------------------------------------- helpers
def npy(t) -> np.ndarray:
    return np.array(t.detach().numpy(), copy=True)


def T(a):
    return fusegrad.tensor(np.array(a, copy=True))


class MLP(nn.Module):
    def __init__(self, d_in=6, h=5, d_out=2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, h)
        self.fc2 = nn.Linear(h, d_out)

    def forward(self, x):
        return self.fc2(self.fc1(x).relu())


def init_params(model, seed):
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        bound = 1.0 / np.sqrt(p.shape[-1]) if p.dim() >= 2 else 0.1
        p.data.numpy()[...] = rng.uniform(-bound, bound, tuple(p.shape)).astype(np.float32)


def twins(make_model=MLP, make_opt=lambda ps: optim.SGD(ps, lr=0.1), seed=0):
    """Two identical (model, optimizer) setups built from one numpy seed."""
    out = []
    for _ in range(2):
        m = make_model()
        init_params(m, seed)
        out.append((m, make_opt(m.parameters())))
    return out


def batch(seed, n=8, d_in=6, d_out=2):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d_in)).astype(np.float32),
            rng.standard_normal((n, d_out)).astype(np.float32))


def check_same(res_e, res_c, rtol=1e-5, atol=1e-6):
    """Compare whatever a step returned (tensors, numbers, tuples of them)."""
    if isinstance(res_e, (tuple, list)):
        assert len(res_e) == len(res_c)
        for a, b in zip(res_e, res_c, strict=True):
            check_same(a, b, rtol, atol)
    elif isinstance(res_e, fusegrad.Tensor):
        a, b = npy(res_e), npy(res_c)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=rtol, atol=atol)
    else:
        assert res_c == pytest.approx(res_e, rel=rtol, abs=atol)


def check_models(me, mc, rtol=1e-5, atol=1e-6):
    for (n, a), (_, b) in zip(me.named_parameters(), mc.named_parameters(), strict=True):
        np.testing.assert_allclose(npy(b), npy(a), rtol=rtol, atol=atol, err_msg=n)


def run_both(make_step, n_calls, before_call=None, seed=0, make_model=MLP,
             make_opt=lambda ps: optim.SGD(ps, lr=0.1), args=None):
    """Run make_step(model, opt) eagerly and compiled on twin setups; compare every call.

    ``before_call(i)`` changes the Python world before call i (for both runs alike);
    ``args(i)`` gives call i's arguments (fresh tensors each run). Returns the compiled step.
    """
    (me, oe), (mc, oc) = twins(make_model, make_opt, seed)
    eager, step = make_step(me, oe), fusegrad.compile(make_step(mc, oc))
    xs, ys = batch(seed + 100)
    args = args or (lambda i: (xs, ys))
    for i in range(n_calls):
        if before_call:
            before_call(i)
        a = args(i)
        re_ = eager(*[T(v) if isinstance(v, np.ndarray) else v for v in a])
        rc = step(*[T(v) if isinstance(v, np.ndarray) else v for v in a])
        check_same(re_, rc)
        check_models(me, mc)
    return step


def sgd_step(model, opt, loss):
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


# --------------------------------------------------------------------------- branches
CONFIG = {"activation": "tanh", "extra_term": False}


def test_branch_on_python_value_taken_at_first_call_then_changing():
    schedule = ["tanh", "tanh", "relu", "relu", "tanh", "sigmoid", "relu"]

    def before(i):
        CONFIG["activation"] = schedule[i]
        CONFIG["extra_term"] = i >= 4

    def make(model, opt):
        def step(x, y):
            h = model(x)
            if CONFIG["activation"] == "tanh":
                h = h.tanh()
            elif CONFIG["activation"] == "relu":
                h = h.relu()
            else:
                h = h.sigmoid()
            loss = ((h - y) ** 2).mean()
            if CONFIG["extra_term"]:
                loss = loss + 0.01 * (h * h).sum()
            return sgd_step(model, opt, loss)
        return step

    step = run_both(make, len(schedule), before)
    # structures: (tanh), (relu), (tanh+extra), (sigmoid+extra), (relu+extra)
    assert step.stats.graphs_compiled == 5
    assert step.stats.graph_hits == len(schedule) - 5


def test_branch_on_data_through_a_graph_break():
    def make(model, opt):
        def step(x, y):
            loss = ((model(x) - y) ** 2).mean()
            if loss.item() > 0.5:  # decided by this call's data
                loss = loss * 2
            return sgd_step(model, opt, loss)
        return step

    rng = np.random.default_rng(5)
    batches = [batch(0)[0] * s for s in (0.1, 3.0, 0.1, 3.0, 3.0)]
    ys = [rng.standard_normal((8, 2)).astype(np.float32) * s for s in (0.1, 2, 0.1, 2, 2)]
    step = run_both(make, 5, args=lambda i: (batches[i], ys[i]))
    assert step.stats.graph_breaks == 5


# --------------------------------------------------------------------------- constants
GLOBAL_SCALE = 1.0


def test_python_constant_and_closure_variable_changing_between_calls():
    global GLOBAL_SCALE
    cell = {"shift": 0.0}
    weight = 1.0

    def make(model, opt):
        def step(x, y):
            loss = (((model(x) + cell["shift"]) * GLOBAL_SCALE - y) ** 2).mean() * weight
            return sgd_step(model, opt, loss)
        return step

    values = [(1.0, 0.0, 1.0), (2.0, 0.5, 1.0), (0.5, -1.0, 3.0), (1.5, 0.25, 0.1)]

    def before(i):
        global GLOBAL_SCALE
        nonlocal weight
        GLOBAL_SCALE, cell["shift"], weight = values[i]

    try:
        step = run_both(make, len(values), before)
    finally:
        GLOBAL_SCALE = 1.0
    assert step.stats.graphs_compiled == 1  # Python floats are runtime inputs
    assert step.stats.graph_hits == len(values) - 1


def test_global_tensor_rebound_between_calls():
    rng = np.random.default_rng(7)
    tensors = [rng.standard_normal((2,)).astype(np.float32) for _ in range(4)]
    holder = {}

    def make(model, opt):
        def step(x, y):
            loss = ((model(x) * holder["w"] - y) ** 2).mean()
            return sgd_step(model, opt, loss)
        return step

    def before(i):
        holder["w"] = T(tensors[i])  # a different tensor object each call

    step = run_both(make, 4, before)
    assert step.stats.graphs_compiled == 1


def test_tensor_mutated_in_place_outside_between_calls():
    rng = np.random.default_rng(8)
    gains = [rng.standard_normal((2,)).astype(np.float32) for _ in range(4)]
    gain_e, gain_c = fusegrad.zeros(2), fusegrad.zeros(2)
    which = {}

    def make(model, opt):
        gain = gain_e if not which else gain_c
        which["made"] = True

        def step(x, y):
            loss = ((model(x) * gain - y) ** 2).mean()
            return sgd_step(model, opt, loss)
        return step

    def before(i):  # the same tensor objects, new contents
        gain_e.numpy()[...] = gains[i]
        with fusegrad.no_grad():
            gain_c.copy_(T(gains[i]))

    run_both(make, 4, before)


# --------------------------------------------------------------------------- arguments
def test_non_tensor_arguments_changing():
    def make(model, opt):
        def step(x, y, alpha, k, flag, weights):
            out = model(x)
            per_col = ((out - y) ** 2).mean(dim=0)  # one loss per output column
            loss = sum(w * per_col[j] for j, w in enumerate(weights)) * alpha + k
            if flag:
                loss = loss + out.abs().mean() * k
            return sgd_step(model, opt, loss), k * 2, flag
        return step

    xs, ys = batch(11)
    calls = [
        (0.5, 1, False, [1.0, 2.0]),
        (1.5, 2, False, [0.5, 0.25]),  # float, int (arithmetic only), list values: no recompile
        (0.1, 7, False, [3.0, -1.0]),
        (1.0, 3, True, [1.0, 1.0]),    # bool flips the branch: a new graph
        (2.0, 5, True, [0.0, 2.0]),
        (1.0, 1, False, [1.0]),        # a shorter list: a new structure
        (0.3, 4, False, [2.0, 1.0]),
    ]
    step = run_both(make, len(calls), args=lambda i: (xs, ys, *calls[i]))
    assert step.stats.graphs_compiled == 3
    assert step.stats.graph_hits == len(calls) - 3


def test_int_argument_deciding_a_shape_recompiles_and_is_not_frozen():
    def make(model, opt):
        def step(x, y, k):
            loss = ((model(x[:k]) - y[:k]) ** 2).mean() * k
            return sgd_step(model, opt, loss)
        return step

    xs, ys = batch(12)
    ks = [2, 5, 2, 8, 5]
    step = run_both(make, len(ks), args=lambda i: (xs, ys, ks[i]))
    assert step.stats.graphs_compiled == 3  # one per distinct k: it decides a shape
    assert step.stats.graph_hits == 2


def test_python_value_from_data_feeds_the_next_graph():
    def make(model, opt):
        def step(x, y):
            out = model(x)
            n_pos = int((out > 0).sum())  # graph break; a Python int from the data
            loss = ((out - y) ** 2).mean() * (1 + n_pos)
            return sgd_step(model, opt, loss), n_pos
        return step

    rng = np.random.default_rng(13)
    xs = [rng.standard_normal((8, 6)).astype(np.float32) for _ in range(4)]
    _, ys = batch(13)
    step = run_both(make, 4, args=lambda i: (xs[i], ys))
    assert step.stats.graph_breaks == 4


# --------------------------------------------------------------------------- randomness
def test_python_numpy_and_fusegrad_randomness_each_call():
    def make(model, opt):
        def step(x, y, rng):
            noise_scale = random.random()  # Python's generator: a runtime scalar
            jitter = fusegrad.tensor(rng.standard_normal(x.shape).astype(np.float32))  # numpy's
            drop = fusegrad.rand(*x.shape) > 0.3  # fusegrad's generator
            xin = (x + jitter * noise_scale) * drop.float()
            loss = ((model(xin) - y) ** 2).mean()
            return sgd_step(model, opt, loss), noise_scale, jitter, drop
        return step

    (me, oe), (mc, oc) = twins(seed=21)
    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    xs, ys = batch(22)
    runs = {}
    for name, fn in (("eager", eager), ("compiled", step)):
        random.seed(3)
        fusegrad.manual_seed(4)
        rng = np.random.default_rng(5)
        runs[name] = [fn(T(xs), T(ys), rng) for _ in range(5)]
    for re_, rc in zip(runs["eager"], runs["compiled"], strict=True):
        check_same(re_, rc)
        np.testing.assert_array_equal(npy(rc[2]), npy(re_[2]))
        np.testing.assert_array_equal(npy(rc[3]), npy(re_[3]))
    check_models(me, mc)
    scales = [r[1] for r in runs["compiled"]]
    assert len(set(scales)) == 5  # fresh numbers every call, not the first call's
    assert step.stats.graphs_compiled == 1


def test_dropout_train_eval_toggle_between_calls():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.drop = nn.Dropout(0.4)

        def forward(self, x):
            return self.fc(self.drop(x))

    modes = [True, True, False, True, False]

    def make(model, opt):
        def step(x, y):
            loss = ((model(x) - y) ** 2).mean()
            return sgd_step(model, opt, loss)
        return step

    (me, oe), (mc, oc) = twins(Net, seed=23)
    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    xs, ys = batch(24)
    for name, fn, model in (("eager", eager, me), ("compiled", step, mc)):
        fusegrad.manual_seed(6)
        out = []
        for train in modes:
            model.train(train)
            out.append(fn(T(xs), T(ys)).item())
        if name == "eager":
            le = out
        else:
            np.testing.assert_allclose(out, le, rtol=1e-5)
    check_models(me, mc)
    assert step.stats.graphs_compiled == 2  # train and eval structures


# --------------------------------------------------------------------------- side effects
class RunningNorm(nn.Module):
    """A BatchNorm-like layer: a running mean kept as a tensor attribute, updated in place."""

    def __init__(self, d, momentum=0.1):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.running_mean = fusegrad.zeros(d)
        self.num_batches_tracked = 0
        self.momentum = momentum

    def forward(self, x):
        h = self.fc(x)
        if self.training:
            mean = h.mean(dim=0)
            with fusegrad.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(mean.detach() * self.momentum)
            self.num_batches_tracked += 1
        else:
            mean = self.running_mean
        return h - mean


def test_side_effect_running_statistic_updated_in_place():
    def make(model, opt):
        def step(x, y):
            loss = ((model(x)[:, :2] - y) ** 2).mean()
            return sgd_step(model, opt, loss), model.running_mean * 1
        return step

    (me, oe), (mc, oc) = twins(lambda: RunningNorm(6), seed=31)
    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    rm = mc.running_mean
    rm_array = rm.numpy()
    rng = np.random.default_rng(32)
    momenta = [0.1, 0.1, 0.5, 0.1, 0.9]
    for i, mom in enumerate(momenta):
        xs = rng.standard_normal((8, 6)).astype(np.float32) + i
        _, ys = batch(33)
        me.momentum = mc.momentum = mom  # a Python attribute changing: runtime scalar
        check_same(eager(T(xs), T(ys)), step(T(xs), T(ys)))
        np.testing.assert_allclose(npy(mc.running_mean), npy(me.running_mean), rtol=1e-5,
                                   atol=1e-6)
        assert mc.num_batches_tracked == me.num_batches_tracked == i + 1  # ran every call
    check_models(me, mc)
    assert mc.running_mean is rm and rm.numpy() is rm_array  # updated in place, same array
    assert step.stats.graphs_compiled == 1
    # eval mode reads the running statistic instead of updating it
    me.eval()
    mc.eval()
    xs, ys = batch(34)
    for _ in range(2):
        check_same(eager(T(xs), T(ys)), step(T(xs), T(ys)))
    np.testing.assert_allclose(npy(mc.running_mean), npy(me.running_mean), rtol=1e-5, atol=1e-6)
    assert mc.num_batches_tracked == len(momenta)


def test_python_side_effects_happen_every_call():
    log_e, log_c = [], []

    def make(model, opt, log):
        def step(x, y):
            loss = ((model(x) - y) ** 2).mean()
            log.append(len(log))  # a plain Python side effect
            return sgd_step(model, opt, loss)
        return step

    (me, oe), (mc, oc) = twins(seed=41)
    eager, step = make(me, oe, log_e), fusegrad.compile(make(mc, oc, log_c))
    xs, ys = batch(42)
    for _ in range(4):
        check_same(eager(T(xs), T(ys)), step(T(xs), T(ys)))
    assert log_c == log_e == [0, 1, 2, 3]


def test_state_read_after_in_place_update_in_the_same_call():
    acc_e, acc_c = fusegrad.zeros(2), fusegrad.zeros(2)

    def make(model, opt, acc):
        def step(x, y):
            out = model(x)
            before = acc * 1  # read the old value
            with fusegrad.no_grad():
                acc.add_(out.detach().mean(dim=0))  # then update in place
            after = acc * 1  # and read the new one
            loss = ((out - y) ** 2).mean() + (out * after).mean() * 0.01
            return sgd_step(model, opt, loss), before, after
        return step

    (me, oe), (mc, oc) = twins(seed=51)
    eager, step = make(me, oe, acc_e), fusegrad.compile(make(mc, oc, acc_c))
    xs, ys = batch(52)
    for _ in range(4):
        check_same(eager(T(xs), T(ys)), step(T(xs), T(ys)))
        np.testing.assert_allclose(npy(acc_c), npy(acc_e), rtol=1e-5, atol=1e-6)
    check_models(me, mc)


# --------------------------------------------------------------------------- hyperparameters
def test_optimizer_hyperparameters_changing_between_calls():
    schedule = [
        dict(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False),
        dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=False),
        dict(lr=0.05, momentum=0.5, weight_decay=0.01, nesterov=False),
        dict(lr=0.02, momentum=0.5, weight_decay=0.01, nesterov=True),
        dict(lr=0.02, momentum=0.0, weight_decay=0.0, nesterov=False),
        dict(lr=0.2, momentum=0.9, weight_decay=0.0, nesterov=False),
    ]
    opts = []

    def make_opt(ps):
        o = optim.SGD(ps, lr=0.1, momentum=0.9)
        opts.append(o)
        return o

    def before(i):
        for o in opts:
            o.param_groups[0].update(schedule[i])

    def make(model, opt):
        def step(x, y):
            return sgd_step(model, opt, ((model(x) - y) ** 2).mean())
        return step

    run_both(make, len(schedule), before, make_opt=make_opt)


def test_requires_grad_toggled_between_calls():
    toggles = [True, True, False, False, True]
    models = []

    def make_model():
        m = MLP()
        models.append(m)
        return m

    def before(i):
        for m in models:
            m.fc1.weight.requires_grad_(toggles[i])

    def make(model, opt):
        def step(x, y):
            return sgd_step(model, opt, ((model(x) - y) ** 2).mean())
        return step

    run_both(make, len(toggles), before, make_model=make_model)
    me, mc = models
    assert (me.fc1.weight.grad is None) == (mc.fc1.weight.grad is None)


# --------------------------------------------------------------------------- views
def _views():
    return {
        "slice": lambda b: b[0],
        "reshape": lambda b: b.reshape(6),
        "view": lambda b: b.view(3, 2),
        "T": lambda b: b.T,
        "unsqueeze": lambda b: b.unsqueeze(0),
        "detach": lambda b: b.detach(),
        "data": lambda b: b.data,
    }


@pytest.mark.parametrize("name", ["detach", "data", "slice", "reshape", "view", "T", "unsqueeze"])
def test_view_or_alias_read_after_in_place_update_of_its_base(name):
    view = _views()[name]
    results = []
    for compiled in (False, True):
        base = fusegrad.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))

        def f():
            v = view(base)
            base.add_(1)
            return v * 1

        g = fusegrad.compile(f) if compiled else f
        results.append([npy(g()) for _ in range(2)])
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(b, a)


def test_view_of_a_dead_temporary_is_not_rederived_by_another_tensors_write():
    # the view's base (x * 2) dies; a later tensor may get its address, and writing to that
    # tensor must not touch the view
    def f(x):
        outs = []
        for _ in range(20):
            v = (x * 2).reshape(6)
            y = x * 1
            y.add_(1)
            outs.append(v * 1 + y.sum())
        return outs

    x = fusegrad.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    for a, b in zip(fusegrad.compile(f)(x), f(x), strict=True):
        np.testing.assert_array_equal(npy(a), npy(b))


@pytest.mark.parametrize("name", ["slice", "reshape", "T"])
def test_in_place_write_through_a_view_is_never_silently_lost(name):
    """Eager writes through a view into its base. Compiled must do the same or refuse loudly
    (a RuntimeError naming the in-place write); it must not drop the write silently."""
    view = _views()[name]

    def f(base):
        v = view(base)
        v.mul_(10)
        return base * 1

    base_e = fusegrad.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    want = npy(f(base_e))
    base_c = fusegrad.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
    try:
        got = npy(fusegrad.compile(f)(base_c))
    except RuntimeError as e:
        assert "in-place" in str(e) and "view" in str(e), str(e)
        return
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(npy(base_c), npy(base_e))


# --------------------------------------------------------------------------- common patterns
def test_gradient_clipping_decided_by_this_calls_norm():
    def make(model, opt):
        def step(x, y, scale):
            loss = ((model(x) - y) ** 2).mean() * scale
            opt.zero_grad()
            loss.backward()
            total = sum((p.grad ** 2).sum() for p in model.parameters()).sqrt()
            coef = 0.5 / (total + 1e-6)
            if coef < 1:  # graph break: clip only when this call's norm is large
                for p in model.parameters():
                    p.grad.mul_(coef)
            opt.step()
            return loss, total
        return step

    xs, ys = batch(61)
    scales = [10.0, 0.01, 10.0, 0.01]  # clipped, not clipped, ...
    step = run_both(make, len(scales), args=lambda i: (xs, ys, scales[i]))
    assert step.stats.graph_breaks == len(scales)


def test_tensor_state_rebound_every_call():
    """An EMA kept by rebinding a tensor (not in place): each call reads the last call's."""
    store = {}

    def make(model, opt):
        key = id(model)
        store[key] = fusegrad.zeros(2)

        def step(x, y):
            out = model(x)
            store[key] = store[key] * 0.9 + out.detach().mean(dim=0) * 0.1
            return sgd_step(model, opt, ((out - y) ** 2).mean()), store[key]
        return step

    step = run_both(make, 4)
    assert step.stats.graphs_compiled == 1


def test_state_loaded_or_edited_outside_between_calls():
    (me, oe), (mc, oc) = twins(make_opt=lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), seed=63)

    def make(model, opt):
        def step(x, y):
            return sgd_step(model, opt, ((model(x) - y) ** 2).mean())
        return step

    eager, step = make(me, oe), fusegrad.compile(make(mc, oc))
    xs, ys = batch(64)
    for i in range(6):
        for m, o in ((me, oe), (mc, oc)):
            if i == 2:  # optimizer state replaced by load_state_dict
                o.load_state_dict(o.state_dict())
            if i == 3:  # model weights replaced
                m.load_state_dict({k: v * 0.5 for k, v in m.state_dict().items()})
            if i == 4:  # parameters edited in place
                with fusegrad.no_grad():
                    for p in m.parameters():
                        p.mul_(1.5)
            if i == 5:  # momentum buffers reset in place
                for st in o.state.values():
                    st["momentum_buffer"].zero_()
        check_same(eager(T(xs), T(ys)), step(T(xs), T(ys)))
        check_models(me, mc)


# --------------------------------------------------------------------------- threads
def test_eager_ops_on_another_thread_during_a_compiled_call_stay_eager():
    import threading

    seen = {}

    def worker():  # e.g. a prefetch or logging thread doing its own tensor math
        a = fusegrad.tensor([1.0, 2.0, 3.0])
        seen["value"] = (a * 2).sum().item()

    def f(x):
        y = x * 3
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        return y.sum()

    step = fusegrad.compile(f)
    assert step(fusegrad.ones(4)).item() == 12.0
    assert seen["value"] == 12.0
    assert step.stats.graph_breaks == 0  # its item() is not this call's graph break
    assert step.stats.graphs_compiled == 1
