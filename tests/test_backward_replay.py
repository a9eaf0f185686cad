"""A compiled call replays the backward an earlier call recorded (stats.backward_replays) only
when the engine would record the same thing: every case here changes something between calls
that the forward graph does not show (requires_grad, no_grad, detach, .grad state, Python
scalars, the gradient given to backward, saved-tensor versions) and must still give eager's
values, gradients and errors, call after call."""

from __future__ import annotations

import numpy as np
import pytest

import fusegrad as fg

SHAPES = [(4, 3), (3,), (3, 3)]


def _params(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [fg.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
            for s in SHAPES]


X = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)


def _values(out):
    if out is None:
        return None
    if isinstance(out, (tuple, list)):
        return [_values(o) for o in out]
    return np.array(out.detach().numpy(), copy=True)


def _same(a, b, what: str):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    if isinstance(a, list):
        for k, (u, v) in enumerate(zip(a, b)):
            _same(u, v, f"{what}[{k}]")
        return
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=what)
    np.testing.assert_array_equal(np.signbit(b), np.signbit(a), err_msg=f"{what}: signs of zeros")


def run_both(step, calls: int = 7) -> fg.compile:
    """Run step(params, x, i) eagerly and compiled from the same state, comparing after each
    call the result (or the error), every .grad and every parameter."""
    eager_ps, comp_ps = _params(), _params()
    compiled = fg.compile(step)
    for i in range(calls):
        got = []
        for fn, ps in ((step, eager_ps), (compiled, comp_ps)):
            try:
                got.append(("value", _values(fn(ps, fg.tensor(X), i))))
            except RuntimeError as e:
                got.append(("error", str(e).split(" (")[0]))
        (ek, ev), (ck, cv) = got
        assert ek == ck, f"call {i}: eager gave {ek} {ev}, compiled gave {ck} {cv}"
        if ek == "error":
            assert ev == cv, f"call {i}"
        else:
            _same(ev, cv, f"call {i}: result")
        for k, (pe, pc) in enumerate(zip(eager_ps, comp_ps)):
            _same(_values(pe.grad), _values(pc.grad), f"call {i}: grad of param {k}")
            _same(_values(pe), _values(pc), f"call {i}: param {k}")
    return compiled


def _fresh(ps):
    for p in ps:
        p.grad = None


def _mlp(ps, x):
    w0, b, w1 = ps
    return ((x @ w0 + b).tanh() @ w1).square().mean()


def test_steady_state_replays_every_backward_after_the_first():
    def step(ps, x, i):
        _fresh(ps)
        loss = _mlp(ps, x)
        loss.backward()
        return loss

    compiled = run_both(step, calls=6)
    assert compiled.stats.graphs_compiled == 1
    assert compiled.stats.backward_replays == 5


def test_freezing_a_parameter_between_calls():
    def step(ps, x, i):
        _fresh(ps)
        ps[2].requires_grad_(i % 3 != 1)
        loss = _mlp(ps, x)
        loss.backward()
        return loss

    compiled = run_both(step)
    assert compiled.stats.backward_replays >= 4


def test_no_grad_around_a_different_op_of_the_same_graph():
    def step(ps, x, i):
        _fresh(ps)
        w = ps[1]
        if i % 2:
            with fg.no_grad():
                a = w * 2.0
            b = w * 3.0
        else:
            a = w * 2.0
            with fg.no_grad():
                b = w * 3.0
        loss = (a + b).sum()
        loss.backward()
        return loss

    run_both(step)


def test_detach_in_some_calls():
    def step(ps, x, i):
        _fresh(ps)
        h = x @ ps[0]
        h2 = h.detach() if i % 3 == 2 else h
        loss = (h2 * h).sum()
        loss.backward()
        return loss

    run_both(step)


def test_gradients_accumulate_across_calls():
    def step(ps, x, i):
        loss = _mlp(ps, x)
        loss.backward()
        return loss

    compiled = run_both(step)
    assert compiled.stats.backward_replays >= 4


def test_accumulation_every_other_call():
    def step(ps, x, i):
        if i % 2 == 0:
            _fresh(ps)
        loss = _mlp(ps, x)
        loss.backward()
        return loss

    compiled = run_both(step, calls=9)
    assert compiled.stats.backward_replays >= 5


def test_zero_grad_in_place():
    def step(ps, x, i):
        for p in ps:
            if p.grad is not None:
                p.grad.zero_()
        loss = _mlp(ps, x)
        loss.backward()
        return loss

    run_both(step)


def test_a_scalar_that_changes_every_call_reaches_the_backward():
    def step(ps, x, i):
        _fresh(ps)
        c = [0.5, 2.0, -1.5, 0.0, -0.0][i % 5]
        loss = ((x @ ps[0]) * c + ps[1] ** [2, 3][i % 2]).sum() + (ps[2] * c).sum()
        loss.backward()
        return loss

    run_both(step, calls=10)


def test_the_gradient_given_to_backward():
    def step(ps, x, i):
        _fresh(ps)
        out = (x @ ps[0]).tanh()
        g = fg.tensor(np.full((5, 3), i - 2.5, np.float32))
        out.backward(gradient=g)
        return out

    run_both(step)


def test_retained_grad_of_an_intermediate():
    def step(ps, x, i):
        _fresh(ps)
        h = x @ ps[0]
        if i % 2:
            h.retain_grad()
        loss = (h.tanh() * ps[1]).sum()
        loss.backward()
        return loss, h.grad

    run_both(step)


def test_one_weight_used_twice():
    def step(ps, x, i):
        _fresh(ps)
        w = ps[2]
        loss = ((x @ ps[0]) @ w @ w).tanh().sum()
        loss.backward()
        return loss

    run_both(step)


def test_two_backwards_in_one_call():
    def step(ps, x, i):
        _fresh(ps)
        loss = _mlp(ps, x)
        loss.backward(retain_graph=True)
        loss.backward()
        other = (x @ ps[0]).sum()
        other.backward()
        return loss

    compiled = run_both(step)
    assert compiled.stats.backward_replays >= 3 * 5


def test_backward_twice_without_retain_graph_still_raises():
    def step(ps, x, i):
        _fresh(ps)
        loss = _mlp(ps, x)
        loss.backward()
        if i >= 3:
            loss.backward()
        return loss

    run_both(step)


def test_a_saved_tensor_changed_in_place_in_some_calls():
    def step(ps, x, i):
        _fresh(ps)
        h = (x @ ps[0]).tanh()
        loss = (h * ps[1]).sum()
        if i == 4:
            h.add_(1.0)
        loss.backward()
        return loss

    run_both(step)


def test_a_saved_input_overwritten_without_a_new_node():
    """copy_ records no node: the graph is the same whichever tensor it overwrites, but eager
    raises only when that tensor is one the backward reads."""
    def step(ps, x, i):
        _fresh(ps)
        spare = x + 0.0
        loss = ((x @ ps[0]).tanh() * ps[1]).sum() + spare.sum()
        (x if i == 4 else spare).copy_(fg.ones(5, 4))
        loss.backward()
        return loss

    run_both(step)


def test_graph_break_between_forward_and_backward():
    seen = []

    def step(ps, x, i):
        _fresh(ps)
        loss = _mlp(ps, x)
        seen.append(loss.item())
        loss.backward()
        return loss

    compiled = run_both(step)
    assert compiled.stats.graph_breaks >= 7


@pytest.mark.parametrize("make_opt", [
    lambda ps: fg.optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: fg.optim.Adam(ps, lr=0.01),
])
def test_training_steps_with_an_optimizer(make_opt):
    opts = {}

    def step(ps, x, i):
        opt = opts.setdefault(id(ps[0]), make_opt(ps))
        opt.zero_grad()
        loss = _mlp(ps, x)
        loss.backward()
        opt.step()
        return loss

    compiled = run_both(step, calls=8)
    assert compiled.stats.backward_replays == 7
