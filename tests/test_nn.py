"""fusegrad.nn against PyTorch: module bookkeeping, repr, state_dict, init, and every
functional op and loss (forward and gradients) on identical inputs."""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import numpy as np
import pytest

import fusegrad
import fusegrad.nn as nn
import fusegrad.nn.functional as F

torch = pytest.importorskip("torch")
tnn = torch.nn
TF = torch.nn.functional


# ----------------------------------------------------------------------------- helpers
def fg(a, requires_grad=False, dtype=None):
    """fusegrad tensor from a numpy array (or a torch tensor)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().numpy()
    t = fusegrad.tensor(np.array(a), dtype=dtype)
    if requires_grad:
        t.requires_grad_()
    return t


def th(a, requires_grad=False):
    t = torch.tensor(np.array(a))
    if requires_grad:
        t.requires_grad_()
    return t


def npy(t):
    if isinstance(t, torch.Tensor):
        return t.detach().numpy()
    return t.detach().numpy()


def close(a, b, rtol=1e-6, atol=1e-8):
    np.testing.assert_allclose(npy(a), npy(b), rtol=rtol, atol=atol)


def copy_module_params(fg_mod, th_mod):
    """Copy torch module's parameters into the fusegrad module (same names)."""
    th_params = dict(th_mod.named_parameters())
    with fusegrad.no_grad():
        for name, p in fg_mod.named_parameters():
            p.copy_(fg(th_params[name]))


def build_net(nn_ns):
    """The same model class written against either ``torch.nn`` or ``fusegrad.nn``."""

    class DynamicNet(nn_ns.Module):
        def __init__(self, d_in, h, d_out):
            super().__init__()
            self.input_linear = nn_ns.Linear(d_in, h)
            self.middle = nn_ns.Sequential(
                nn_ns.Linear(h, h), nn_ns.ReLU(), nn_ns.LayerNorm(h), nn_ns.Dropout(0.25)
            )
            self.acts = nn_ns.Sequential(
                OrderedDict(tanh=nn_ns.Tanh(), sig=nn_ns.Sigmoid(), gelu=nn_ns.GELU())
            )
            self.output_linear = nn_ns.Linear(h, d_out, bias=False)
            self.scale = nn_ns.Parameter(torch.ones(1) if nn_ns is tnn else fusegrad.ones(1))
            self.register_buffer("counter", torch.zeros(2) if nn_ns is tnn else fusegrad.zeros(2))
            self.loss_fn = nn_ns.CrossEntropyLoss()

        def forward(self, x):
            h = self.input_linear(x).clamp(min=0)
            h = self.middle(h)
            h = self.acts(h)
            return self.output_linear(h) * self.scale

    return DynamicNet


# ----------------------------------------------------------------------------- Module
def test_named_parameters_order_and_names_match_torch():
    f = build_net(nn)(5, 4, 3)
    t = build_net(tnn)(5, 4, 3)
    f_names = [n for n, _ in f.named_parameters()]
    t_names = [n for n, _ in t.named_parameters()]
    assert f_names == t_names
    assert [tuple(p.shape) for p in f.parameters()] == [tuple(p.shape) for p in t.parameters()]
    assert [n for n, _ in f.named_buffers()] == [n for n, _ in t.named_buffers()]
    assert [n for n, _ in f.named_modules()] == [n for n, _ in t.named_modules()]
    assert [n for n, _ in f.named_children()] == [n for n, _ in t.named_children()]
    assert len(list(f.modules())) == len(list(t.modules()))
    assert [n for n, _ in f.named_parameters(recurse=False)] == ["scale"]
    assert len(list(f.parameters(recurse=False))) == 1
    assert all(isinstance(p, nn.Parameter) for p in f.parameters())
    assert list(f.state_dict().keys()) == list(t.state_dict().keys())


def test_repr_matches_torch():
    f = build_net(nn)(1000, 100, 10)
    t = build_net(tnn)(1000, 100, 10)
    assert repr(f) == repr(t)
    for fm, tm in [
        (nn.Linear(3, 4), tnn.Linear(3, 4)),
        (nn.Linear(3, 4, bias=False), tnn.Linear(3, 4, bias=False)),
        (nn.ReLU(), tnn.ReLU()),
        (nn.GELU(approximate="tanh"), tnn.GELU(approximate="tanh")),
        (nn.LayerNorm((2, 3), eps=1e-6), tnn.LayerNorm((2, 3), eps=1e-6)),
        (nn.Dropout(0.1), tnn.Dropout(0.1)),
        (nn.MSELoss(), tnn.MSELoss()),
        (nn.L1Loss(reduction="sum"), tnn.L1Loss(reduction="sum")),
        (nn.CrossEntropyLoss(), tnn.CrossEntropyLoss()),
        (nn.Softmax(dim=1), tnn.Softmax(dim=1)),
        (nn.Flatten(), tnn.Flatten()),
        (
            nn.ModuleList([nn.ReLU(), nn.ReLU(), nn.Tanh()]),
            tnn.ModuleList([tnn.ReLU(), tnn.ReLU(), tnn.Tanh()]),
        ),
        (nn.Sequential(), tnn.Sequential()),
        (
            nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Tanh()}),
            tnn.ModuleDict({"a": tnn.Linear(2, 2), "b": tnn.Tanh()}),
        ),
    ]:
        assert repr(fm) == repr(tm)
    assert repr(nn.Linear(2, 2).weight).startswith("Parameter containing:")


def test_dynamic_net_repr_text():
    class DynamicNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.input_linear = nn.Linear(1000, 100)
            self.output_linear = nn.Linear(100, 10)

    assert repr(DynamicNet()) == (
        "DynamicNet(\n"
        "  (input_linear): Linear(in_features=1000, out_features=100, bias=True)\n"
        "  (output_linear): Linear(in_features=100, out_features=10, bias=True)\n"
        ")"
    )


def test_attribute_registration_rules():
    m = nn.Module()
    m.w = nn.Parameter(fusegrad.ones(2))
    m.sub = nn.Linear(2, 2)
    m.register_buffer("buf", fusegrad.zeros(3))
    m.register_buffer("tmp", fusegrad.zeros(1), persistent=False)
    m.plain = 3
    assert [n for n, _ in m.named_parameters()] == ["w", "sub.weight", "sub.bias"]
    assert [n for n, _ in m.named_buffers()] == ["buf", "tmp"]
    assert list(m.state_dict().keys()) == ["w", "buf", "sub.weight", "sub.bias"]
    assert m.plain == 3 and "plain" not in m._parameters
    with pytest.raises(TypeError, match="cannot assign"):
        m.w = fusegrad.ones(2)  # a plain tensor cannot replace a Parameter
    m.w = None
    assert [n for n, _ in m.named_parameters()] == ["sub.weight", "sub.bias"]
    with pytest.raises(TypeError, match="cannot assign"):
        m.sub = 5
    with pytest.raises(KeyError):
        m.register_buffer("plain", fusegrad.zeros(1))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = m.nope
    del m.sub
    assert list(m.children()) == []

    class Early(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(fusegrad.ones(1))

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Early()


def test_shared_parameter_listed_once():
    lin = nn.Linear(3, 3)
    seq = nn.Sequential(lin, nn.ReLU(), lin)
    assert len(list(seq.parameters())) == 2
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]


def test_sequential_container_ops():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    s = nn.Sequential(a, b)
    s.append(c)
    assert len(s) == 3 and s[0] is a and s[-1] is c and list(s) == [a, b, c]
    sub = s[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == [b, c]
    with pytest.raises(IndexError):
        s[3]
    del s[0]
    assert list(s._modules.keys()) == ["0", "1"] and s[0] is b
    x = fusegrad.randn(4, 3)
    out = s(x)
    assert tuple(out.shape) == (4, 1)


def test_module_dict_and_list():
    d = nn.ModuleDict({"enc": nn.Linear(2, 3), "act": nn.ReLU()})
    d["dec"] = nn.Linear(3, 1)
    assert list(d) == ["enc", "act", "dec"] and "act" in d and len(d) == 3
    assert [n for n, _ in d.named_parameters()] == [
        "enc.weight",
        "enc.bias",
        "dec.weight",
        "dec.bias",
    ]
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(ml) == 3 and ml[-1] is ml[2]
    assert len(list(ml.parameters())) == 6


def test_one_hot_vs_torch():
    t = np.array([[0, 2], [1, 3]], dtype=np.int64)
    np.testing.assert_array_equal(npy(F.one_hot(fg(t))), TF.one_hot(th(t)).numpy())
    out = F.one_hot(fg(t), 5)
    assert out.dtype == fusegrad.int64
    np.testing.assert_array_equal(npy(out), TF.one_hot(th(t), 5).numpy())


def test_train_eval_propagate():
    f = build_net(nn)(3, 4, 2)
    assert f.training and all(m.training for m in f.modules())
    assert f.eval() is f
    assert not any(m.training for m in f.modules())
    f.train()
    assert all(m.training for m in f.modules())
    with pytest.raises(ValueError):
        f.train("yes")


def test_apply_visits_children_first():
    seen = []
    s = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.ReLU()))
    s.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "ReLU", "Sequential", "Sequential"]


def test_forward_not_implemented():
    with pytest.raises(NotImplementedError, match="forward"):
        nn.Module()(1)


def test_zero_grad_module():
    lin = nn.Linear(3, 2)
    lin(fusegrad.ones(4, 3)).sum().backward()
    grad = lin.weight.grad
    assert grad is not None
    lin.zero_grad(set_to_none=False)
    assert lin.weight.grad is grad
    np.testing.assert_array_equal(npy(lin.weight.grad), np.zeros((2, 3), np.float32))
    lin.zero_grad()
    assert lin.weight.grad is None and lin.bias.grad is None


# ----------------------------------------------------------------------------- state_dict
def test_state_dict_values_detached_and_sharing_storage():
    lin = nn.Linear(3, 2)
    sd = lin.state_dict()
    assert isinstance(sd, OrderedDict) and list(sd) == ["weight", "bias"]
    assert not sd["weight"].requires_grad
    close(sd["weight"], lin.weight)
    with fusegrad.no_grad():
        sd["weight"].fill_(2.0)
    np.testing.assert_array_equal(npy(lin.weight), np.full((2, 3), 2.0, np.float32))
    assert lin.state_dict(keep_vars=True)["weight"] is lin.weight


def test_load_state_dict_round_trip_keeps_identity():
    fusegrad.manual_seed(0)
    a = build_net(nn)(5, 4, 3)
    b = build_net(nn)(5, 4, 3)
    w_before = b.input_linear.weight
    result = b.load_state_dict(a.state_dict())
    assert repr(result) == "<All keys matched successfully>"
    assert b.input_linear.weight is w_before
    for (n1, p1), (n2, p2) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert n1 == n2
        np.testing.assert_array_equal(npy(p1), npy(p2))
    x = fusegrad.randn(2, 5)
    a.eval(), b.eval()
    np.testing.assert_array_equal(npy(a(x)), npy(b(x)))
    # the copy is a copy: changing a afterwards does not change b
    with fusegrad.no_grad():
        a.input_linear.weight.fill_(0.0)
    assert np.any(npy(b.input_linear.weight) != 0)


def _torch_load_error(model_t, sd_t):
    with pytest.raises(RuntimeError) as ei:
        model_t.load_state_dict(sd_t)
    return str(ei.value)


def test_load_state_dict_errors_match_torch():
    f = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    t = tnn.Sequential(tnn.Linear(2, 3), tnn.ReLU(), tnn.Linear(3, 1))

    fsd, tsd = f.state_dict(), t.state_dict()
    del fsd["2.bias"], tsd["2.bias"]
    fsd["extra"] = fusegrad.zeros(1)
    tsd["extra"] = torch.zeros(1)
    fsd["0.weight"] = fusegrad.zeros(4, 2)
    tsd["0.weight"] = torch.zeros(4, 2)
    with pytest.raises(RuntimeError) as ei:
        f.load_state_dict(fsd)
    expected = _torch_load_error(t, tsd)
    expected = expected.replace(str(torch.zeros(4, 2).shape), str(fusegrad.zeros(4, 2).shape))
    expected = expected.replace(str(torch.zeros(3, 2).shape), str(fusegrad.zeros(3, 2).shape))
    assert str(ei.value) == expected
    assert 'Missing key(s) in state_dict: "2.bias"' in str(ei.value)
    assert 'Unexpected key(s) in state_dict: "extra"' in str(ei.value)
    assert "size mismatch for 0.weight" in str(ei.value)

    # strict=False reports instead of raising (size mismatches still raise)
    fsd2 = f.state_dict()
    del fsd2["0.bias"]
    fsd2["foo.bar"] = fusegrad.zeros(1)
    res = f.load_state_dict(fsd2, strict=False)
    assert res.missing_keys == ["0.bias"] and res.unexpected_keys == ["foo.bar"]
    tsd2 = t.state_dict()
    del tsd2["0.bias"]
    tsd2["foo.bar"] = torch.zeros(1)
    assert repr(res) == repr(t.load_state_dict(tsd2, strict=False))
    with pytest.raises(RuntimeError, match='Missing key\\(s\\) in state_dict: "0.bias"'):
        f.load_state_dict(fsd2)


def test_module_to_dtype_keeps_parameter_identity():
    lin = nn.Linear(3, 2)
    w = lin.weight
    lin(fusegrad.ones(1, 3)).sum().backward()
    out = lin.to(fusegrad.float64)
    assert out is lin and lin.weight is w
    assert lin.weight.dtype == fusegrad.float64 and lin.bias.dtype == fusegrad.float64
    assert lin.weight.grad.dtype == fusegrad.float64
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.requires_grad
    y = lin(fusegrad.ones(1, 3, dtype=fusegrad.float64))
    assert y.dtype == fusegrad.float64
    lin.float()
    assert lin.weight.dtype == fusegrad.float32 and lin.weight is w
    assert lin.to("cpu") is lin and lin.weight is w
    with pytest.raises(TypeError):
        lin.to(fusegrad.int64)


def test_module_to_cuda_without_gpu_raises():
    if fusegrad.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(Exception):  # noqa: B017 - the core's error propagates unchanged
        nn.Linear(2, 2).to("cuda")


# ----------------------------------------------------------------------------- Linear
def test_linear_default_init_statistics():
    fusegrad.manual_seed(123)
    lin = nn.Linear(1000, 400)
    w, b = npy(lin.weight), npy(lin.bias)
    bound = 1 / math.sqrt(1000)
    assert w.shape == (400, 1000) and b.shape == (400,)
    assert w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # uses the whole interval
    assert abs(w.mean()) < 4 * bound / math.sqrt(3 * w.size)
    np.testing.assert_allclose(w.var(), bound**2 / 3, rtol=0.02)
    assert lin.weight.requires_grad and lin.weight.is_leaf and lin.weight.grad_fn is None
    fusegrad.manual_seed(123)
    np.testing.assert_array_equal(npy(nn.Linear(1000, 400).weight), w)


def test_init_functions():
    fusegrad.manual_seed(0)
    t = fusegrad.empty(300, 200)
    nn.init.xavier_uniform_(t)
    a = math.sqrt(6 / 500)
    assert np.abs(npy(t)).max() <= a
    nn.init.kaiming_normal_(t, nonlinearity="relu")
    np.testing.assert_allclose(npy(t).std(), math.sqrt(2 / 200), rtol=0.03)
    nn.init.constant_(t, 0.5)
    assert np.all(npy(t) == 0.5)
    nn.init.zeros_(t)
    assert np.all(npy(t) == 0)
    assert nn.init.calculate_gain("tanh") == tnn.init.calculate_gain("tanh")
    assert nn.init.calculate_gain("leaky_relu", 0.2) == tnn.init.calculate_gain("leaky_relu", 0.2)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_backward_vs_torch(bias):
    tl = tnn.Linear(5, 3, bias=bias).double()
    fl = nn.Linear(5, 3, bias=bias).to(fusegrad.float64)
    copy_module_params(fl, tl)
    x = np.random.default_rng(0).standard_normal((4, 2, 5))
    xf, xt = fg(x, True), th(x, True)
    g = np.random.default_rng(1).standard_normal((4, 2, 3))
    yf, yt = fl(xf), tl(xt)
    close(yf, yt, rtol=1e-12)
    (yf * fg(g)).sum().backward()
    (yt * th(g)).sum().backward()
    close(xf.grad, xt.grad, rtol=1e-12)
    close(fl.weight.grad, tl.weight.grad, rtol=1e-12)
    if bias:
        close(fl.bias.grad, tl.bias.grad, rtol=1e-12)


def test_linear_wrong_feature_size_message():
    lin = nn.Linear(1000, 100)
    with pytest.raises(RuntimeError) as ei:
        lin(fusegrad.zeros(64, 999))
    msg = str(ei.value)
    assert "Linear(in_features=1000, out_features=100)" in msg
    assert "(64, 999)" in msg and "1000" in msg
    assert "test_nn.py:" in msg  # the user's source line
    assert "AddmmBackward0" in repr(lin(fusegrad.zeros(2, 1000)).grad_fn)


# ----------------------------------------------------------------------------- functional
RNG = np.random.default_rng(42)
X = RNG.standard_normal((4, 6))
X3 = RNG.standard_normal((2, 3, 5))

UNARY = [
    ("relu", lambda m, x: m.relu(x)),
    ("gelu", lambda m, x: m.gelu(x)),
    ("gelu_tanh", lambda m, x: m.gelu(x, approximate="tanh")),
    ("tanh", lambda m, x: m.tanh(x)),
    ("sigmoid", lambda m, x: m.sigmoid(x)),
    ("silu", lambda m, x: m.silu(x)),
    ("leaky_relu", lambda m, x: m.leaky_relu(x, 0.1)),
    ("softmax0", lambda m, x: m.softmax(x, dim=0)),
    ("softmax1", lambda m, x: m.softmax(x, dim=1)),
    ("softmax-1", lambda m, x: m.softmax(x, dim=-1)),
    ("log_softmax0", lambda m, x: m.log_softmax(x, dim=0)),
    ("log_softmax1", lambda m, x: m.log_softmax(x, dim=-1)),
    ("dropout_eval", lambda m, x: m.dropout(x, 0.5, training=False)),
]


@pytest.mark.parametrize("name,fn", UNARY, ids=[u[0] for u in UNARY])
@pytest.mark.parametrize("x", [X, X3], ids=["2d", "3d"])
def test_unary_functional_vs_torch(name, fn, x):
    xf, xt = fg(x, True), th(x, True)
    yf, yt = fn(F, xf), fn(TF, xt)
    close(yf, yt, rtol=1e-10, atol=1e-12)
    g = np.random.default_rng(7).standard_normal(x.shape)
    (yf * fg(g)).sum().backward()
    (yt * th(g)).sum().backward()
    close(xf.grad, xt.grad, rtol=1e-9, atol=1e-12)


def test_unary_functional_float32():
    x = X.astype(np.float32)
    for _, fn in UNARY:
        xf, xt = fg(x, True), th(x, True)
        yf, yt = fn(F, xf), fn(TF, xt)
        assert yf.dtype == fusegrad.float32
        close(yf, yt, rtol=1e-5, atol=1e-6)
        yf.sum().backward()
        yt.sum().backward()
        close(xf.grad, xt.grad, rtol=1e-4, atol=1e-5)


def test_softmax_implicit_dim_warns_like_torch():
    with pytest.warns(UserWarning, match="Implicit dimension choice for softmax"):
        yf = F.softmax(fg(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yt = TF.softmax(th(X))
    close(yf, yt)


@pytest.mark.parametrize(
    "shape,norm,affine",
    [((4, 6), (6,), True), ((4, 6), 6, False), ((2, 3, 5), (3, 5), True), ((2, 3, 5), (5,), True)],
)
def test_layer_norm_vs_torch(shape, norm, affine):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * 3 + 1
    nshape = (norm,) if isinstance(norm, int) else norm
    w = rng.standard_normal(nshape) if affine else None
    b = rng.standard_normal(nshape) if affine else None
    xf, xt = fg(x, True), th(x, True)
    wf, wt = (fg(w, True), th(w, True)) if affine else (None, None)
    bf, bt = (fg(b, True), th(b, True)) if affine else (None, None)
    yf = F.layer_norm(xf, norm, wf, bf, eps=1e-5)
    yt = TF.layer_norm(xt, nshape, wt, bt, eps=1e-5)
    close(yf, yt, rtol=1e-9, atol=1e-10)
    g = rng.standard_normal(shape)
    (yf * fg(g)).sum().backward()
    (yt * th(g)).sum().backward()
    close(xf.grad, xt.grad, rtol=1e-8, atol=1e-10)
    if affine:
        close(wf.grad, wt.grad, rtol=1e-9, atol=1e-10)
        close(bf.grad, bt.grad, rtol=1e-9, atol=1e-10)


def test_layer_norm_module_and_shape_error():
    fm, tm = nn.LayerNorm(6), tnn.LayerNorm(6)
    assert [n for n, _ in fm.named_parameters()] == ["weight", "bias"]
    np.testing.assert_array_equal(npy(fm.weight), np.ones(6, np.float32))
    np.testing.assert_array_equal(npy(fm.bias), np.zeros(6, np.float32))
    x = X.astype(np.float32)
    close(fm(fg(x)), tm(th(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="normalized_shape"):
        fm(fusegrad.zeros(2, 5))


def test_dropout_train_and_eval():
    fusegrad.manual_seed(0)
    p = 0.3
    x = fusegrad.ones(200, 100, requires_grad=True)
    d = nn.Dropout(p)
    y = d(x)
    yn = npy(y)
    kept = yn != 0
    np.testing.assert_allclose(yn[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(kept.mean() - (1 - p)) < 0.02
    y.sum().backward()
    np.testing.assert_allclose(npy(x.grad), kept / (1 - p), rtol=1e-6)
    # same seed, same mask
    fusegrad.manual_seed(0)
    np.testing.assert_array_equal(npy(nn.Dropout(p)(x)), yn)
    d.eval()
    np.testing.assert_array_equal(npy(d(x)), np.ones((200, 100), np.float32))
    assert F.dropout(x, p, training=False) is x
    np.testing.assert_array_equal(npy(F.dropout(x, 1.0)), np.zeros((200, 100), np.float32))
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        nn.Dropout(1.5)
    with pytest.raises(ValueError, match="dropout probability"):
        F.dropout(x, -0.1)


# ----------------------------------------------------------------------------- losses
def _loss_check(f_call, t_call, inputs, grad_of=(0,), rtol=1e-10):
    """Run the same loss in both frameworks and compare value and input gradients."""
    f_in = [fg(a, i in grad_of) if a.dtype != np.int64 else fg(a) for i, a in enumerate(inputs)]
    t_in = [th(a, i in grad_of) if a.dtype != np.int64 else th(a) for i, a in enumerate(inputs)]
    lf, lt = f_call(*f_in), t_call(*t_in)
    close(lf, lt, rtol=rtol, atol=1e-12)
    g = np.random.default_rng(5).standard_normal(tuple(lt.shape))
    (lf * fg(g)).sum().backward()
    (lt * th(g)).sum().backward()
    for i in grad_of:
        close(f_in[i].grad, t_in[i].grad, rtol=rtol * 10, atol=1e-12)


REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_pointwise_losses_vs_torch(name, reduction):
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    _loss_check(
        lambda x, y: getattr(F, name)(x, y, reduction=reduction),
        lambda x, y: getattr(TF, name)(x, y, reduction=reduction),
        [a, b],
        grad_of=(0, 1),
    )
    mod_f = {"mse_loss": nn.MSELoss, "l1_loss": nn.L1Loss}[name](reduction=reduction)
    mod_t = {"mse_loss": tnn.MSELoss, "l1_loss": tnn.L1Loss}[name](reduction=reduction)
    close(mod_f(fg(a), fg(b)), mod_t(th(a), th(b)), rtol=1e-12)


def test_mse_loss_broadcast_warns_like_torch():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((4, 1)), rng.standard_normal((4,))
    with pytest.warns(UserWarning, match="Using a target size"):
        lf = F.mse_loss(fg(a), fg(b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt = TF.mse_loss(th(a), th(b))
    close(lf, lt, rtol=1e-12)


def test_invalid_reduction_raises_value_error():
    x = fusegrad.zeros(3)
    with pytest.raises(ValueError, match="^bogus is not a valid value for reduction$"):
        F.mse_loss(x, x, reduction="bogus")
    with pytest.raises(ValueError, match="bogus is not a valid value for reduction"):
        nn.L1Loss(reduction="bogus")(x, x)
    with pytest.raises(ValueError, match="bogus is not a valid value for reduction"):
        nn.CrossEntropyLoss(reduction="bogus")(fusegrad.zeros(2, 3), fusegrad.tensor([0, 1]))


CE_CASES = [
    # (input shape, target kind, kwargs)
    ((5, 4), "index", {}),
    ((5, 4), "index", {"weight": True}),
    ((5, 4), "index_with_ignored", {}),
    ((5, 4), "index_with_ignored", {"weight": True}),
    ((5, 4), "index", {"ignore_index": 1}),
    ((5, 4), "index", {"ignore_index": 1, "weight": True}),
    ((5, 4), "index", {"label_smoothing": 0.1}),
    ((5, 4), "index_with_ignored", {"label_smoothing": 0.2, "weight": True}),
    ((5, 4), "prob", {}),
    ((5, 4), "prob", {"weight": True, "label_smoothing": 0.1}),
    ((4,), "index", {}),
    ((4,), "prob", {}),
    ((2, 4, 3), "index", {}),
    ((2, 4, 3), "index_with_ignored", {"weight": True}),
    ((2, 4, 3), "prob", {}),
]


def _ce_inputs(shape, kind, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 2
    class_dim = 0 if len(shape) == 1 else 1
    c = shape[class_dim]
    tshape = shape[:class_dim] + shape[class_dim + 1 :]
    if kind == "prob":
        p = rng.random(shape)
        return x, p / p.sum(axis=class_dim, keepdims=True), c
    t = rng.integers(0, c, size=tshape).astype(np.int64)
    if kind == "index_with_ignored":
        t.reshape(-1)[::3] = -100
    return x, np.array(t), c


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", CE_CASES, ids=[f"{c[0]}-{c[1]}-{sorted(c[2])}" for c in CE_CASES])
def test_cross_entropy_vs_torch(case, reduction):
    shape, kind, kw = case
    x, t, c = _ce_inputs(shape, kind)
    kw = dict(kw)
    if kw.pop("weight", False):
        w = np.random.default_rng(9).random(c) + 0.5
        kwf, kwt = dict(kw, weight=fg(w)), dict(kw, weight=th(w))
    else:
        kwf, kwt = kw, kw
    _loss_check(
        lambda a, b: F.cross_entropy(a, b, reduction=reduction, **kwf),
        lambda a, b: TF.cross_entropy(a, b, reduction=reduction, **kwt),
        [x, t],
    )
    _loss_check(
        lambda a, b: nn.CrossEntropyLoss(reduction=reduction, **kwf)(a, b),
        lambda a, b: tnn.CrossEntropyLoss(reduction=reduction, **kwt)(a, b),
        [x, t],
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_vs_torch(reduction):
    x, t, c = _ce_inputs((6, 3), "index_with_ignored", seed=4)
    logp = x - np.log(np.exp(x).sum(1, keepdims=True))
    _loss_check(
        lambda a, b: F.nll_loss(a, b, reduction=reduction),
        lambda a, b: TF.nll_loss(a, b, reduction=reduction),
        [logp, t],
    )


def test_cross_entropy_float32_default_module():
    x, t, _ = _ce_inputs((8, 5), "index", seed=1)
    x = x.astype(np.float32)
    xf, xt = fg(x, True), th(x, True)
    lf = nn.CrossEntropyLoss()(xf, fg(t))
    lt = tnn.CrossEntropyLoss()(xt, th(t))
    assert lf.dtype == fusegrad.float32 and tuple(lf.shape) == ()
    close(lf, lt, rtol=1e-5)
    lf.backward()
    lt.backward()
    close(xf.grad, xt.grad, rtol=1e-4, atol=1e-6)


def test_cross_entropy_target_errors():
    x = fusegrad.zeros(3, 4)
    with pytest.raises(RuntimeError) as ei:
        F.cross_entropy(x, fusegrad.zeros(3))  # float target with class-index shape
    msg = str(ei.value)
    assert "float32" in msg and "[3, 4]" in msg and "[3]" in msg
    assert "test_nn.py:" in msg
    with pytest.raises(RuntimeError, match="batch_size"):
        F.cross_entropy(x, fusegrad.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="floating point"):
        F.cross_entropy(x, fusegrad.zeros(3, 4, dtype=fusegrad.int64))
    with pytest.raises(RuntimeError, match="label_smoothing"):
        F.cross_entropy(x, fusegrad.tensor([0, 1, 2]), label_smoothing=1.5)
    # torch raises too for the first two
    with pytest.raises(RuntimeError):
        TF.cross_entropy(torch.zeros(3, 4), torch.zeros(3))
    with pytest.raises((RuntimeError, ValueError)):
        TF.cross_entropy(torch.zeros(3, 4), torch.tensor([0, 1]))


def test_training_loop_matches_torch():
    """A few SGD steps of a small MLP with every module kind, float64, eval-mode dropout."""
    f = build_net(nn)(5, 8, 3).to(fusegrad.float64)
    t = build_net(tnn)(5, 8, 3).double()
    copy_module_params(f, t)
    f.eval(), t.eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 5))
    y = rng.integers(0, 3, 16).astype(np.int64)
    for _ in range(3):
        lf = f.loss_fn(f(fg(x)), fg(y))
        lt = t.loss_fn(t(th(x)), th(y))
        close(lf, lt, rtol=1e-10)
        f.zero_grad(), t.zero_grad()
        lf.backward(), lt.backward()
        with fusegrad.no_grad():
            for p in f.parameters():
                p.add_(p.grad, alpha=-0.1)
        with torch.no_grad():
            for p in t.parameters():
                p.add_(p.grad, alpha=-0.1)
    for (_n, pf), (_, pt) in zip(f.named_parameters(), t.named_parameters(), strict=True):
        close(pf, pt, rtol=1e-9, atol=1e-12)
