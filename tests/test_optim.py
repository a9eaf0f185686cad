"""fusegrad.optim against PyTorch's single-tensor (foreach=False) optimizers and against the
update formulas written out in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fusegrad
import fusegrad.nn as nn
import fusegrad.optim as optim

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (4,), ()]


def npy(t):
    return t.detach().numpy()


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    fp = [nn.Parameter(fusegrad.tensor(a.copy())) for a in arrays]
    tp = [torch.nn.Parameter(torch.tensor(a.copy())) for a in arrays]
    return fp, tp


def grad_fn(p: np.ndarray, k: int, i: int) -> np.ndarray:
    """A deterministic gradient that depends on the current parameter value."""
    return np.asarray(2.0 * (p - 0.3 * (i + 1)) + 0.5 * np.sin(p * (k + 1)) + 0.01 * k)


def set_grads(fp, tp, k):
    for i, (a, b) in enumerate(zip(fp, tp, strict=True)):
        a.grad = fusegrad.tensor(grad_fn(npy(a), k, i))
        b.grad = torch.tensor(grad_fn(b.detach().numpy(), k, i))


def assert_params_close(fp, tp, rtol=1e-6):
    for a, b in zip(fp, tp, strict=True):
        np.testing.assert_allclose(npy(a), b.detach().numpy(), rtol=rtol, atol=1e-12)


SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.8, nesterov=True),
    dict(lr=0.1, weight_decay=0.1),
    dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True),
    dict(lr=0.1, maximize=True),
    dict(lr=0.1, momentum=0.5, weight_decay=0.1, maximize=True),
]
ADAM_CONFIGS = [
    dict(),
    dict(lr=0.05),
    dict(lr=0.05, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=0.05, betas=(0.3, 0.9)),  # 1 - beta1 >= 0.5: the other side of lerp
    dict(lr=0.05, weight_decay=0.1),
    dict(lr=0.05, amsgrad=True),
    dict(lr=0.05, maximize=True, weight_decay=0.01),
]
ADAMW_CONFIGS = [
    dict(),
    dict(lr=0.05),
    dict(lr=0.05, weight_decay=0.1, amsgrad=True),
    dict(lr=0.05, maximize=True),
]
CASES = (
    [("SGD", c) for c in SGD_CONFIGS]
    + [("Adam", c) for c in ADAM_CONFIGS]
    + [("AdamW", c) for c in ADAMW_CONFIGS]
)


def make_opts(name, cfg, fp, tp):
    fo = getattr(optim, name)(fp, foreach=False, **cfg)
    to = getattr(torch.optim, name)(tp, foreach=False, **cfg)
    return fo, to


@pytest.mark.parametrize("name,cfg", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_five_steps_match_torch(name, cfg):
    fp, tp = make_params()
    fo, to = make_opts(name, cfg, fp, tp)
    for k in range(5):
        set_grads(fp, tp, k)
        fo.step()
        to.step()
        assert_params_close(fp, tp, rtol=1e-10)
    assert fo.param_groups[0].keys() == to.param_groups[0].keys()
    assert repr(fo) == repr(to)


@pytest.mark.parametrize("name,cfg", CASES[:3] + CASES[9:11], ids=lambda v: str(v))
def test_float32_params_match_torch(name, cfg):
    fp, tp = make_params(dtype=np.float32)
    fo, to = make_opts(name, cfg, fp, tp)
    for k in range(5):
        set_grads(fp, tp, k)
        fo.step()
        to.step()
    for a in fp:
        assert a.dtype == fusegrad.float32
    assert_params_close(fp, tp, rtol=1e-5)


def test_sgd_momentum_one_step_vs_numpy():
    p0 = np.array([1.0, -2.0, 3.0])
    g0 = np.array([0.5, 0.25, -1.0])
    p = nn.Parameter(fusegrad.tensor(p0.copy()))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    for k in range(2):
        p.grad = fusegrad.tensor(g0 * (k + 1))
        opt.step()
    # by hand
    q = p0.copy()
    buf = None
    for k in range(2):
        g = g0 * (k + 1) + 0.01 * q
        buf = g.copy() if buf is None else 0.9 * buf + g
        q = q - 0.1 * (g + 0.9 * buf)
    np.testing.assert_allclose(npy(p), q, rtol=1e-12)
    np.testing.assert_allclose(npy(opt.state[p]["momentum_buffer"]), buf, rtol=1e-12)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_adam_steps_vs_numpy(name):
    p0 = np.array([[1.0, -2.0], [0.5, 4.0]])
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    p = nn.Parameter(fusegrad.tensor(p0.copy()))
    opt = getattr(optim, name)([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    q, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 4):
        g = np.cos(q) + t
        p.grad = fusegrad.tensor(np.cos(npy(p)) + t)
        opt.step()
        if name == "AdamW":
            q = q * (1 - lr * wd)
        else:
            g = g + wd * q
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + eps
        q = q - lr / (1 - b1**t) * m / denom
        np.testing.assert_allclose(npy(p), q, rtol=1e-12)
    state = opt.state[p]
    assert state["step"] == 3 and isinstance(state["step"], (int, float))
    np.testing.assert_allclose(npy(state["exp_avg"]), m, rtol=1e-12)
    np.testing.assert_allclose(npy(state["exp_avg_sq"]), v, rtol=1e-12)


def test_param_groups_lr_change_between_steps_and_none_grads_skipped():
    fp, tp = make_params()
    fo = optim.Adam([{"params": fp[:2]}, {"params": fp[2:], "lr": 0.2}], lr=0.01)
    to = torch.optim.Adam(
        [{"params": tp[:2]}, {"params": tp[2:], "lr": 0.2}], lr=0.01, foreach=False
    )
    assert fo.param_groups[1]["lr"] == 0.2 and fo.param_groups[0]["lr"] == 0.01
    assert fo.param_groups[1]["betas"] == (0.9, 0.999)
    for k in range(5):
        set_grads(fp, tp, k)
        fp[1].grad, tp[1].grad = None, None  # skipped: no state, no change
        for g_f, g_t in zip(fo.param_groups, to.param_groups, strict=True):
            g_f["lr"] *= 0.7
            g_t["lr"] *= 0.7
        fo.step()
        to.step()
    assert_params_close(fp, tp, rtol=1e-10)
    assert len(fo.state[fp[1]]) == 0
    np.testing.assert_array_equal(npy(fp[1]), make_params()[0][1].detach().numpy())


def test_sgd_lr_change():
    fp, tp = make_params()
    fo, to = make_opts("SGD", dict(lr=0.1, momentum=0.9), fp, tp)
    for k in range(4):
        set_grads(fp, tp, k)
        fo.param_groups[0]["lr"] = to.param_groups[0]["lr"] = 0.1 / (k + 1)
        fo.step()
        to.step()
    assert_params_close(fp, tp, rtol=1e-10)


def test_zero_grad_modes():
    fp, _ = make_params()
    opt = optim.SGD(fp, lr=0.1)
    for p in fp:
        p.grad = fusegrad.ones(*p.shape, dtype=fusegrad.float64)
    grads = [p.grad for p in fp]
    opt.zero_grad(set_to_none=False)
    for p, g in zip(fp, grads, strict=True):
        assert p.grad is g
        np.testing.assert_array_equal(npy(p.grad), np.zeros(p.shape))
    opt.zero_grad()
    assert all(p.grad is None for p in fp)
    opt.step()  # nothing to do


def test_step_closure_returns_loss():
    p = nn.Parameter(fusegrad.tensor([1.0, 2.0]))
    opt = optim.SGD([p], lr=0.5)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert float(loss.item()) == 5.0
    np.testing.assert_allclose(npy(p), [0.0, 0.0], atol=1e-7)


def _clone_sd(sd):
    """A deep copy of an optimizer state_dict (what torch.save/torch.load would give)."""
    return {
        "state": {
            k: {n: (v.clone() if isinstance(v, fusegrad.Tensor) else v) for n, v in s.items()}
            for k, s in sd["state"].items()
        },
        "param_groups": [dict(g) for g in sd["param_groups"]],
    }


@pytest.mark.parametrize(
    "name,cfg",
    [("SGD", dict(lr=0.1, momentum=0.9)), ("Adam", dict(lr=0.05, amsgrad=True)), ("AdamW", {})],
)
def test_state_dict_round_trip_continues_identically(name, cfg):
    fp, tp = make_params()
    fo, to = make_opts(name, cfg, fp, tp)
    for k in range(3):
        set_grads(fp, tp, k)
        fo.step()
        to.step()
    sd_f, sd_t = fo.state_dict(), to.state_dict()
    # layout as PyTorch's
    assert sd_f["param_groups"] == sd_t["param_groups"]
    assert sd_f["state"].keys() == sd_t["state"].keys()
    for k in sd_t["state"]:
        assert sd_f["state"][k].keys() == sd_t["state"][k].keys()
        for n, v in sd_t["state"][k].items():
            np.testing.assert_allclose(npy(sd_f["state"][k][n]), v.numpy(), rtol=1e-10)
    saved = _clone_sd(sd_f)

    # a fresh optimizer on a copy of the parameters continues exactly like the original
    fp2 = [nn.Parameter(p.detach().clone()) for p in fp]
    fo2 = getattr(optim, name)(fp2, lr=123.0)
    fo2.load_state_dict(saved)
    assert fo2.param_groups[0]["lr"] == fo.param_groups[0]["lr"]
    assert fo2.param_groups[0]["params"][0] is fp2[0]
    if name != "SGD":
        assert fo2.state[fp2[0]]["step"] == 3 and not isinstance(
            fo2.state[fp2[0]]["step"], fusegrad.Tensor
        )
    for k in range(3, 6):
        set_grads(fp, tp, k)
        for i, p in enumerate(fp2):
            p.grad = fusegrad.tensor(grad_fn(npy(p), k, i))
        fo.step()
        fo2.step()
        to.step()
    for a, b in zip(fp, fp2, strict=True):
        np.testing.assert_array_equal(npy(a), npy(b))
    assert_params_close(fp, tp, rtol=1e-10)


def test_load_state_dict_mismatch_errors():
    fp, _ = make_params()
    opt = optim.SGD(fp, lr=0.1)
    sd = opt.state_dict()
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optim.SGD([{"params": fp[:1]}, {"params": fp[1:]}], lr=0.1).load_state_dict(sd)
    with pytest.raises(ValueError, match="doesn't match the size"):
        optim.SGD(fp[:2], lr=0.1).load_state_dict(sd)


def _messages(fn_f, fn_t):
    with pytest.raises(Exception) as ef:
        fn_f()
    with pytest.raises(Exception) as et:
        fn_t()
    assert type(ef.value) is type(et.value)
    return str(ef.value), str(et.value)


@pytest.mark.parametrize(
    "name,cfg",
    [
        ("SGD", dict(lr=-1)),
        ("SGD", dict(lr=0.1, momentum=-0.5)),
        ("SGD", dict(lr=0.1, weight_decay=-1.0)),
        ("SGD", dict(lr=0.1, nesterov=True)),
        ("SGD", dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True)),
        ("Adam", dict(lr=-0.01)),
        ("Adam", dict(eps=-1.0)),
        ("Adam", dict(betas=(1.0, 0.999))),
        ("Adam", dict(betas=(0.9, -0.1))),
        ("Adam", dict(weight_decay=-0.1)),
        ("AdamW", dict(lr=-1.0)),
    ],
)
def test_invalid_hyperparameters_raise_like_torch(name, cfg):
    fp, tp = make_params()
    mf, mt = _messages(
        lambda: getattr(optim, name)(fp, **cfg), lambda: getattr(torch.optim, name)(tp, **cfg)
    )
    assert mf == mt
    if name == "SGD" and cfg.get("lr") == -1:
        assert mf == "Invalid learning rate: -1"


def test_constructor_errors():
    fp, _ = make_params()
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="iterable of Tensors or dicts"):
        optim.SGD(fp[0], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        optim.SGD([{"params": fp}, {"params": fp[:1]}], lr=0.1)
    with pytest.raises(ValueError, match="non-leaf"):
        optim.SGD([fp[0] * 2], lr=0.1)
    opt = optim.SGD(fp[:1], lr=0.1)
    opt.add_param_group({"params": fp[1:], "momentum": 0.5})
    assert len(opt.param_groups) == 2 and opt.param_groups[1]["lr"] == 0.1
    assert opt.param_groups[1]["momentum"] == 0.5


def test_adamw_defaults_and_repr_like_torch():
    fp, tp = make_params()
    fo, to = optim.AdamW(fp), torch.optim.AdamW(tp)
    assert repr(fo) == repr(to)
    assert {k: v for k, v in fo.defaults.items()} == to.defaults
    fs, ts = optim.SGD(fp, lr=0.1, momentum=0.9), torch.optim.SGD(tp, lr=0.1, momentum=0.9)
    assert repr(fs) == repr(ts)
    assert fs.state_dict() == ts.state_dict()  # empty state before the first step


def test_optimizer_with_module_training():
    """Linear regression with Adam, float64, fusegrad vs torch end to end."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    fm = nn.Linear(3, 1).to(fusegrad.float64)
    tm = torch.nn.Linear(3, 1).double()
    with fusegrad.no_grad():
        fm.weight.copy_(fusegrad.tensor(tm.weight.detach().numpy()))
        fm.bias.copy_(fusegrad.tensor(tm.bias.detach().numpy()))
    fo = optim.Adam(fm.parameters(), lr=0.05)
    to = torch.optim.Adam(tm.parameters(), lr=0.05, foreach=False)
    for _ in range(20):
        fo.zero_grad()
        to.zero_grad()
        lf = nn.functional.mse_loss(fm(fusegrad.tensor(x)), fusegrad.tensor(y))
        lt = torch.nn.functional.mse_loss(tm(torch.tensor(x)), torch.tensor(y))
        lf.backward()
        lt.backward()
        fo.step()
        to.step()
    np.testing.assert_allclose(npy(fm.weight), tm.weight.detach().numpy(), rtol=1e-9)
    np.testing.assert_allclose(float(lf.item()), float(lt.item()), rtol=1e-9)
