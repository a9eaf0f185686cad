"""The Tensor in eager mode, as the seed tutorials and PyTorch users see it: printed values and
reprs, autograd (accumulation, retain_graph, retain_grad, autograd.grad, no_grad, detach),
memory sharing with numpy, dtype promotion, errors and the state an error leaves, in-place ops,
item assignment, and the example scripts in examples/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest

import fusegrad
import fusegrad as torch  # the seed programs below are written against `torch`

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")


def real_torch():
    return pytest.importorskip("torch")


# ----------------------------------------------------------------------------- seeds 000 / 002
def test_seed_autograd_tutorial_prints():
    x = torch.ones(2, 2, requires_grad=True)
    assert repr(x) == "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)"
    assert str(x) == repr(x)
    y = x + 2
    assert repr(y) == "tensor([[3., 3.],\n        [3., 3.]], grad_fn=<AddBackward0>)"
    assert re.fullmatch(r"<AddBackward0 object at 0x[0-9a-f]+>", repr(y.grad_fn))
    z = y * y * 3
    out = z.mean()
    assert repr(z) == "tensor([[27., 27.],\n        [27., 27.]], grad_fn=<MulBackward0>)"
    assert repr(out) == "tensor(27., grad_fn=<MeanBackward0>)"
    assert re.fullmatch(r"<MulBackward0 object at 0x[0-9a-f]+>", repr(z.grad_fn))
    assert re.fullmatch(r"<MeanBackward0 object at 0x[0-9a-f]+>", repr(out.grad_fn))

    out.backward()
    assert repr(x) == "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)"
    assert repr(x.grad) == "tensor([[4.5000, 4.5000],\n        [4.5000, 4.5000]])"
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 2), 4.5, np.float32))


def test_seed_requires_grad_():
    torch.manual_seed(0)
    a = torch.randn(2, 2)
    a = (a * 3) / (a - 1)
    assert a.requires_grad is False
    assert a.requires_grad_(True) is a
    assert a.requires_grad is True
    assert repr(a).endswith(", requires_grad=True)")
    b = (a * a).sum()
    assert re.fullmatch(r"<SumBackward0 object at 0x[0-9a-f]+>", repr(b.grad_fn))


@pytest.mark.parametrize("seed", range(5))
def test_seed_vector_jacobian_product_while_loop(seed):
    torch.manual_seed(seed)
    x = torch.randn(3, requires_grad=True)
    y = x * 2
    k = 1
    while y.data.norm() < 1000:
        y = y * 2
        k += 1
    assert repr(y).endswith("grad_fn=<MulBackward0>)")
    assert float(y.data.norm()) >= 1000
    v = torch.tensor([0.1, 1.0, 0.0001], dtype=torch.float)
    y.backward(v)
    np.testing.assert_allclose(x.grad.numpy(), v.numpy() * 2.0**k, rtol=1e-6)
    np.testing.assert_allclose(y.detach().numpy(), x.detach().numpy() * 2.0**k, rtol=1e-6)


def test_seed_vjp_prints_in_scientific_mode():
    # seed 002: y.backward(v) after ten doublings prints this
    assert repr(torch.tensor([0.1, 1.0, 0.0001]) * 2**10) == (
        "tensor([1.0240e+02, 1.0240e+03, 1.0240e-01])"
    )
    assert (
        repr(torch.tensor([0.1, 1.0, 0.0001]) * 2) == "tensor([2.0000e-01, 2.0000e+00, 2.0000e-04])"
    )


def test_seed_no_grad_detach_eq_all():
    x = torch.randn(3, requires_grad=True)
    assert x.requires_grad
    assert (x**2).requires_grad
    with torch.no_grad():
        assert not (x**2).requires_grad
        assert (x**2).grad_fn is None
    assert (x**2).requires_grad  # grad mode is back after the block
    y = x.detach()
    assert not y.requires_grad and y.grad_fn is None and y.is_leaf
    eq = x.eq(y).all()
    assert repr(eq) == "tensor(True)"
    assert eq.dtype is torch.bool and bool(eq) is True


def test_no_grad_as_decorator_and_enable_grad():
    x = torch.ones(2, requires_grad=True)

    @torch.no_grad()
    def f(t):
        return t * 2

    assert not f(x).requires_grad
    with torch.no_grad():
        with torch.enable_grad():
            assert (x * 2).requires_grad
        assert not (x * 2).requires_grad
    assert torch.is_grad_enabled()


# ----------------------------------------------------------------------------- seed 003 / 004
def test_seed_linear_function_gradients_and_accumulation():
    x = torch.tensor([3.0], requires_grad=True)
    w = torch.tensor([5.0], requires_grad=True)
    b = torch.tensor([2.0], requires_grad=True)
    y = w * x + b
    assert repr(y) == "tensor([17.], grad_fn=<AddBackward0>)"
    y.backward(retain_graph=True)
    assert (x.grad.item(), w.grad.item(), b.grad.item()) == (5.0, 3.0, 1.0)
    for _ in range(4):
        y.backward(retain_graph=True)
    assert (x.grad.item(), w.grad.item(), b.grad.item()) == (25.0, 15.0, 5.0)
    assert repr(x.grad) == "tensor([25.])"


def test_seed_computation_graph_chain_rule():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(1.0, requires_grad=True)
    c = a + b
    d = b + 1
    e = c * d
    assert repr(e) == "tensor(6., grad_fn=<MulBackward0>)"
    e.backward()
    assert a.grad.item() == 2.0  # de/dc * dc/da = d
    assert b.grad.item() == 5.0  # two paths: d + c
    assert repr(b.grad) == "tensor(5.)"


def test_retain_grad_on_intermediates():
    x = torch.ones(2, requires_grad=True)
    h = x * 2
    h.retain_grad()
    assert h.retains_grad and not x.retains_grad
    (h * h).sum().backward()
    np.testing.assert_array_equal(h.grad.numpy(), [4.0, 4.0])
    np.testing.assert_array_equal(x.grad.numpy(), [8.0, 8.0])
    assert (x * 2).grad is None  # non-leaves keep no grad unless asked


def test_retain_grad_is_not_aliased_with_leaf_grad():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(1.0, requires_grad=True)
    c = a + b
    d = b + 1
    c.retain_grad()
    d.retain_grad()
    (c * d).backward()
    assert (c.grad.item(), d.grad.item(), a.grad.item(), b.grad.item()) == (2.0, 3.0, 2.0, 5.0)
    x = torch.tensor([1.0], requires_grad=True)  # the leaf takes g first, the retained node after
    h = x * 2
    h.retain_grad()
    e = x + h
    (e * 3).sum().backward()
    assert (h.grad.item(), x.grad.item()) == (3.0, 9.0)


# ----------------------------------------------------------------------------- autograd
def test_grad_accumulates_and_zero_():
    w = torch.ones(2, requires_grad=True)
    (w * 3).sum().backward()
    (w * 3).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [6.0, 6.0])
    g = w.grad
    (w * 1).sum().backward()
    assert w.grad is g  # accumulated in place, like PyTorch's AccumulateGrad
    np.testing.assert_array_equal(g.numpy(), [7.0, 7.0])
    w.grad.zero_()
    np.testing.assert_array_equal(w.grad.numpy(), [0.0, 0.0])


def test_backward_with_gradient_argument():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * x
    y.backward(torch.tensor([1.0, 0.5]))
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_autograd_grad_leaves_dot_grad_alone():
    x = torch.tensor([2.0], requires_grad=True)
    y = x**3
    (g,) = torch.autograd.grad(y, x)
    assert g.item() == 12.0 and x.grad is None
    y = x**3
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    assert g.requires_grad
    (gg,) = torch.autograd.grad(g, x)
    assert gg.item() == 12.0  # d2/dx2 x^3 = 6x
    a, b = torch.ones(2, requires_grad=True), torch.ones(2, requires_grad=True)
    ga, gb = torch.autograd.grad((a * 3 + b * 5).sum(), [a, b])
    np.testing.assert_array_equal(ga.numpy(), [3, 3])
    np.testing.assert_array_equal(gb.numpy(), [5, 5])
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad((a * 2).sum(), [a, b])
    ga, gb = torch.autograd.grad((a * 2).sum(), [a, b], allow_unused=True)
    assert gb is None


@pytest.mark.parametrize("name,f,f2", [
    ("exp", lambda x: x.exp(), np.exp),
    ("sqrt", lambda x: x.sqrt(), lambda a: -0.25 * a ** -1.5),
    ("rsqrt", lambda x: x.rsqrt(), lambda a: 0.75 * a ** -2.5),
    ("tanh", lambda x: x.tanh(), lambda a: -2 * np.tanh(a) * (1 - np.tanh(a) ** 2)),
    ("sigmoid", lambda x: x.sigmoid(), lambda a: (s := 1 / (1 + np.exp(-a))) * (1 - s) * (1 - 2 * s)),
    ("relu", lambda x: x.relu(), lambda a: np.zeros_like(a)),
    ("pow", lambda x: 2.0 ** x, lambda a: 2.0 ** a * np.log(2.0) ** 2),
])
def test_second_derivative_through_an_ops_saved_output(name, f, f2):
    # These VJPs read the op's output; with create_graph=True the gradient flows through it
    # too (PyTorch saves the output with its grad_fn), so d2/dx2 is complete.
    a = np.linspace(0.3, 2.0, 7)
    x = torch.tensor(a, requires_grad=True)
    (g,) = torch.autograd.grad(f(x).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    np.testing.assert_allclose(gg.numpy(), f2(a), rtol=1e-10, atol=1e-12)
    assert x.grad is None


def test_autograd_grad_with_grad_outputs_and_non_leaf_input():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    y = h * h
    (gh,) = torch.autograd.grad(y, h, grad_outputs=torch.tensor([1.0, 1.0]))
    np.testing.assert_array_equal(gh.numpy(), [6.0, 12.0])


def test_requires_grad_():
    t = torch.zeros(3)
    assert not t.requires_grad and t.is_leaf
    assert t.requires_grad_() is t and t.requires_grad
    t.requires_grad_(False)
    assert not t.requires_grad
    with pytest.raises(RuntimeError, match="floating point"):
        torch.ones(2, dtype=torch.int64).requires_grad_()
    with pytest.raises(RuntimeError, match="leaf variables"):
        (torch.ones(2, requires_grad=True) * 2).requires_grad_(False)


def test_integer_results_do_not_require_grad():
    x = torch.randn(3, requires_grad=True)
    for t in (x.long(), x.argmax(), x > 0, x.int()):
        assert not t.requires_grad and t.grad_fn is None


# ----------------------------------------------------------------------------- errors
def test_backward_twice_without_retain_graph():
    x = torch.ones(3, requires_grad=True)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="Trying to backward through the graph a second time"):
        y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])  # the failed call added nothing
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0, 6.0])


def test_backward_on_non_scalar_needs_gradient():
    x = torch.ones(3, requires_grad=True)
    y = x * 2
    with pytest.raises(
        RuntimeError, match="grad can be implicitly created only for scalar outputs"
    ):
        y.backward()
    assert x.grad is None
    with pytest.raises(RuntimeError, match="Mismatch in shape"):
        y.backward(torch.ones(4))
    assert x.grad is None
    y.backward(torch.ones(3))  # the graph is intact after both errors
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0, 2.0])


def test_backward_of_tensor_without_grad():
    with pytest.raises(RuntimeError, match="does not require grad"):
        torch.ones(2).sum().backward()


def test_in_place_on_leaf_that_requires_grad():
    x = torch.ones(3, requires_grad=True)
    for fn in (
        lambda: x.add_(1),
        lambda: x.mul_(2),
        lambda: x.zero_(),
        lambda: x.__setitem__(0, 5.0),
    ):
        with pytest.raises(
            RuntimeError,
            match="a leaf Variable that requires grad is being used in an in-place operation",
        ):
            fn()
    np.testing.assert_array_equal(x.detach().numpy(), [1.0, 1.0, 1.0])
    assert x.requires_grad and x.is_leaf and x.grad_fn is None
    with torch.no_grad():  # the usual optimizer-step pattern is allowed
        x.add_(1)
    np.testing.assert_array_equal(x.detach().numpy(), [2.0, 2.0, 2.0])
    assert x.is_leaf and x.requires_grad


def test_shape_mismatch_error_names_op_shapes_and_user_line():
    with pytest.raises(RuntimeError) as e:
        torch.ones(3, 4) + torch.ones(5)
    msg = str(e.value)
    assert "add" in msg and "(3, 4)" in msg and "(5,)" in msg
    assert "test_tensor.py:" in msg
    with pytest.raises(RuntimeError) as e:
        torch.ones(3, 4) @ torch.ones(5, 2)
    msg = str(e.value)
    assert "matmul" in msg and "3x4" in msg and "5x2" in msg and "test_tensor.py:" in msg
    with pytest.raises(RuntimeError) as e:
        torch.cat([torch.ones(2, 3), torch.ones(2, 4)])
    msg = str(e.value)
    assert "cat" in msg and "(2, 3)" in msg and "(2, 4)" in msg and "test_tensor.py:" in msg
    with pytest.raises(RuntimeError) as e:
        torch.ones(6).view(4, 2)
    assert "[4, 2]" in str(e.value) and "test_tensor.py:" in str(e.value)


def test_dtype_mismatch_error_names_op_dtypes_and_user_line():
    with pytest.raises(RuntimeError) as e:
        torch.ones(2, 2) @ torch.ones(2, 2, dtype=torch.float64)
    msg = str(e.value)
    assert "matmul" in msg and "float32" in msg and "float64" in msg and "test_tensor.py:" in msg


ERRORS = [  # (what, fn, exception, op named in the message)
    ("requires_grad_ of int", lambda: torch.tensor([1, 2]).requires_grad_(), RuntimeError,
     "requires_grad_"),
    ("requires_grad_(False) of non-leaf", lambda: (torch.ones(2, requires_grad=True) * 2)
     .requires_grad_(False), RuntimeError, "requires_grad_"),
    ("~ of float", lambda: ~torch.ones(2), RuntimeError, "bitwise_not"),
    ("clamp without bounds", lambda: torch.ones(2).clamp(), RuntimeError, "clamp"),
    ("cat of nothing", lambda: torch.cat([]), RuntimeError, "cat"),
    ("stack of nothing", lambda: torch.stack([]), RuntimeError, "stack"),
    ("linear of mixed dtypes", lambda: torch.nn.functional.linear(
        torch.ones(2, 3), torch.ones(4, 3, dtype=torch.float64)), RuntimeError, "linear"),
    ("reshape to a wrong size", lambda: torch.ones(6).reshape(4, -1), RuntimeError, "reshape"),
    ("sum over a missing dim", lambda: torch.ones(2, 3).sum(2), IndexError, "out of range"),
    ("in-place on a leaf", lambda: torch.ones(2, requires_grad=True).add_(1), RuntimeError, "add_"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_errors_name_the_op_and_the_user_line(case):
    _, fn, exc, op = case
    with pytest.raises(exc) as e:
        fn()
    assert op in str(e.value) and "test_tensor.py:" in str(e.value), str(e.value)


def test_in_place_error_names_the_op():
    with pytest.raises(RuntimeError, match=r"add_: output with shape \[3\] doesn't match the "
                       r"broadcast shape \[2, 3\] \(at test_tensor.py:"):
        torch.ones(3).add_(torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="mul_: result type float32 can't be cast"):
        torch.tensor([1, 2]).mul_(1.5)
    with pytest.raises(RuntimeError, match="add_: output with shape"):
        (torch.ones(3, requires_grad=True) * 1).add_(torch.ones(2, 3))  # the recorded path


def test_index_out_of_range_is_index_error():
    x = torch.ones(3)
    with pytest.raises(IndexError, match="getitem.*out of bounds.*test_tensor.py:"):
        x[5]
    with pytest.raises(IndexError, match="out of bounds"):
        x[torch.tensor([4])]
    with pytest.raises(IndexError, match="index_put_.*out of bounds"):
        x[5] = 1.0
    with pytest.raises(IndexError, match="out of bounds"):
        (torch.ones(3, requires_grad=True) * 1)[5] = 1.0  # the recorded index_put
    assert list(torch.arange(3)) == [0, 1, 2]  # iteration stops at the IndexError too


def test_cuda_unavailable_errors():
    if fusegrad.cuda.is_available():
        pytest.skip("a CUDA GPU is available")
    t = torch.ones(2)
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        t.cuda()
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        t.to("cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        torch.zeros(2, device="cuda")
    assert t.device == "cpu" and t.to("cpu") is t and t.cpu() is t
    assert repr(t.device) == "device(type='cpu')"
    assert fusegrad.cuda.device_count() == 0


@pytest.mark.gpu
def test_cuda_round_trip():
    t = torch.arange(4.0)
    g = t.cuda()
    assert g.is_cuda
    np.testing.assert_array_equal(g.cpu().numpy(), t.numpy())


# ----------------------------------------------------------------------------- state after errors
def test_failed_in_place_ops_leave_values_intact():
    a = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError):
        a.add_(torch.ones(2, 3))  # would broadcast to a bigger shape
    with pytest.raises(RuntimeError):
        a.mul_(torch.ones(4))
    with pytest.raises(RuntimeError):
        a[0:2] = torch.ones(3)
    np.testing.assert_array_equal(a.numpy(), [1.0, 2.0, 3.0])
    i = torch.tensor([1, 2, 3])
    with pytest.raises(RuntimeError, match="can't be cast"):
        i.add_(1.5)  # float result into an int tensor
    np.testing.assert_array_equal(i.numpy(), [1, 2, 3])
    assert i.dtype is torch.int64


def test_failed_op_leaves_graph_usable():
    x = torch.ones(2, requires_grad=True)
    y = x * 3
    with pytest.raises(RuntimeError):
        y + torch.ones(3)
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


# ----------------------------------------------------------------------------- in-place, versions
def test_in_place_ops_values():
    a = torch.ones(3)
    a.copy_(torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(a.numpy(), [1, 2, 3])
    a += 1
    np.testing.assert_array_equal(a.numpy(), [2, 3, 4])
    a.mul_(2)
    a -= 1
    np.testing.assert_array_equal(a.numpy(), [3, 5, 7])
    a.fill_(7)
    np.testing.assert_array_equal(a.numpy(), [7, 7, 7])
    a.zero_()
    np.testing.assert_array_equal(a.numpy(), [0, 0, 0])
    b = torch.ones(2, 3)
    b.mul_(torch.tensor([1.0, 2.0, 3.0]))  # broadcast operand
    np.testing.assert_array_equal(b.numpy(), [[1, 2, 3], [1, 2, 3]])
    b.copy_(torch.tensor([4.0, 5.0, 6.0]))  # copy_ broadcasts too
    np.testing.assert_array_equal(b.numpy(), [[4, 5, 6], [4, 5, 6]])
    c = torch.zeros(3, dtype=torch.int64)
    c.copy_(torch.tensor([1.7, -1.7, 2.0]))  # cast to the destination dtype
    assert c.dtype is torch.int64
    np.testing.assert_array_equal(c.numpy(), [1, -1, 2])


def test_in_place_ops_are_seen_through_aliases():
    a = torch.zeros(3)
    d = a.detach()
    n = a.numpy()
    a.add_(1)
    np.testing.assert_array_equal(d.numpy(), [1, 1, 1])
    np.testing.assert_array_equal(n, [1, 1, 1])


def test_in_place_on_non_leaf_is_differentiated():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = x * 2
    y.mul_(3)
    y.add_(1)
    assert re.fullmatch(r"<AddBackward0 object at 0x[0-9a-f]+>", repr(y.grad_fn))
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 6.0])


def test_version_counter_error_on_modified_saved_input():
    a = torch.randn(3, requires_grad=True)
    w = torch.ones(3)
    c = a * w  # saves w for a's gradient
    w.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.sum().backward()


def test_in_place_on_non_leaf_is_seen_through_aliases():
    a = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = a * 1
    d = b.detach()
    v = b.detach()[1:]  # a numpy view of the same memory
    b.add_(1)
    np.testing.assert_array_equal(d.numpy(), [2.0, 3.0, 4.0])
    np.testing.assert_array_equal(v.numpy(), [3.0, 4.0])
    b.mul_(torch.tensor([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(d.numpy(), [2.0, 6.0, 12.0])
    b.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 2.0, 3.0])


def test_in_place_with_an_operand_that_requires_grad():
    """x.mul_(w) with w requiring grad: x's memory changes, and w's gradient reads x's old value."""
    x = torch.tensor([1.0, 2.0, 3.0])
    d = x.detach()
    w = torch.tensor([4.0, 5.0, 6.0], requires_grad=True)
    x.mul_(w)
    assert x.requires_grad and x.grad_fn.name() == "MulBackward0"
    np.testing.assert_array_equal(d.numpy(), [4.0, 10.0, 18.0])
    x.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [1.0, 2.0, 3.0])


def test_version_counter_error_on_modified_saved_non_leaf():
    a = torch.randn(3, requires_grad=True)
    b = a * 1
    c = b * b
    b.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.sum().backward()


def test_version_counter_error_on_modified_saved_output():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = a.exp()  # ExpBackward0 saves its output
    b.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace.*an output of ExpBackward0"):
        b.sum().backward()
    c = a * 2  # MulBackward0 saves only the scalar: changing c is fine
    c.add_(1)
    c.sum().backward()
    np.testing.assert_array_equal(a.grad.numpy(), [2.0, 2.0])


def test_in_place_on_view_of_tensor_requiring_grad_is_refused():
    b = torch.ones(2, 3, requires_grad=True) * 2
    with pytest.raises(RuntimeError, match="mul_: in-place change of a view"):
        b[0].mul_(3)
    with pytest.raises(RuntimeError, match="add_: in-place change of a view"):
        b.t().add_(1)
    c = b[[1, 0]]  # a gather is a copy: changing it is fine
    c.mul_(3)
    c.sum().backward()
    np.testing.assert_array_equal(b.detach().numpy(), np.full((2, 3), 2.0))


def test_fill_and_copy_of_non_leaf_cut_its_gradient():
    a = torch.tensor([1.0, 2.0], requires_grad=True)
    b = a * 3
    b.fill_(5.0)
    c = a * 3
    c.copy_(torch.tensor([7.0, 8.0]))
    (b.sum() + c.sum() + a.sum()).backward()
    np.testing.assert_array_equal(b.detach().numpy(), [5.0, 5.0])
    np.testing.assert_array_equal(c.detach().numpy(), [7.0, 8.0])
    np.testing.assert_array_equal(a.grad.numpy(), [1.0, 1.0])


def test_lerp_matches_pytorch_formula():
    th = real_torch()
    start = [1.0, 2.0, 1e8, -3.0]
    end = [3.0, -2.0, 1.0, 5.0]
    for w in (0.0, 0.25, 0.75, 1.0, [0.25, 0.75, 0.9, 1.0]):
        got = torch.tensor(start)
        want = th.tensor(start)
        got.lerp_(torch.tensor(end), torch.tensor(w) if isinstance(w, list) else w)
        want.lerp_(th.tensor(end), th.tensor(w) if isinstance(w, list) else w)
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_grad_assignment_is_checked_like_pytorch():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    with pytest.raises(RuntimeError, match=r"gradient of size '\[3\]' to a tensor of size '\[2\]'"):
        x.grad = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="dtype 'float64'"):
        x.grad = torch.tensor([1.0, 2.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="dtype 'int64'"):
        x.grad = torch.tensor([1, 2])
    with pytest.raises(TypeError, match="got grad of type list"):
        x.grad = [1.0, 2.0]
    assert x.grad is None
    g = torch.tensor([3.0, 4.0])
    x.grad = g
    (x * 1).sum().backward()  # accumulates into the assigned gradient
    np.testing.assert_array_equal(x.grad.numpy(), [4.0, 5.0])
    x.grad = None
    assert x.grad is None


def test_numpy_shares_memory():
    t = torch.zeros(3)
    n = t.numpy()
    n[0] = 5
    assert t[0].item() == 5
    t.add_(1)
    np.testing.assert_array_equal(n, [6, 1, 1])
    assert np.shares_memory(n, t.numpy())
    with pytest.raises(RuntimeError, match="requires grad"):
        torch.ones(2, requires_grad=True).numpy()
    r = torch.ones(2, requires_grad=True)
    assert np.shares_memory(r.detach().numpy(), r.data.numpy())


def test_from_numpy_shares_memory_and_tensor_copies():
    arr = np.zeros(3, np.float32)
    t = torch.from_numpy(arr)
    t.add_(1)
    np.testing.assert_array_equal(arr, [1, 1, 1])
    arr[1] = 7
    assert t[1].item() == 7
    assert torch.from_numpy(np.zeros(2)).dtype is torch.float64
    assert torch.from_numpy(np.zeros(2, np.int64)).dtype is torch.int64
    c = torch.tensor(arr)
    arr[0] = 100
    assert c[0].item() == 1  # tensor() copies
    with pytest.raises(TypeError):
        torch.from_numpy(np.zeros(2, np.float16))


def test_data_shares_memory():
    t = torch.zeros(3, requires_grad=True)
    d = t.data
    assert not d.requires_grad and d.is_leaf
    d[0] = 3
    np.testing.assert_array_equal(t.detach().numpy(), [3, 0, 0])
    assert t.requires_grad
    t.data.mul_(2)
    np.testing.assert_array_equal(t.detach().numpy(), [6, 0, 0])


def test_tolist_item_and_conversions():
    t = torch.tensor([[1.5, 2.0]])
    assert t.tolist() == [[1.5, 2.0]]
    assert torch.tensor(3).item() == 3 and isinstance(torch.tensor(3).item(), int)
    assert float(torch.tensor(2.5)) == 2.5
    f = torch.tensor([0.2, 1.7, -2.9])
    assert f.long().dtype is torch.int64 and f.long().tolist() == [0, 1, -2]
    assert f.int().dtype is torch.int32
    assert f.double().dtype is torch.float64
    assert f.bool().tolist() == [True, True, True]
    with pytest.raises(RuntimeError, match="cannot be converted to Scalar"):
        torch.ones(2).item()
    with pytest.raises(RuntimeError, match="ambiguous"):
        bool(torch.ones(2))


# ----------------------------------------------------------------------------- item assignment
ASSIGNMENTS = [
    ("mask=0", lambda x: x > 2, 0.0),
    ("row", 1, np.array([7.0, 8.0, 9.0, 10.0])),
    ("scalar row", 0, 5.0),
    ("neg row", -1, np.array([1.0, 2.0, 3.0, 4.0])),
    ("element", (2, 3), -1.0),
    ("col slice", (slice(1, None), 0), np.array([4.0, 4.5])),
    ("index list", [0, 2], 5.0),
    ("index rows", ([0, 2],), np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])),
    ("pairs", ([0, 1], [1, 2]), np.array([-3.0, -4.0])),
    ("ellipsis", (Ellipsis, 1), np.array([0.5, 0.25, 0.125])),
    ("mask values", lambda x: x < 4, "count"),
    ("broadcast row", slice(0, 2), np.array([9.0, 8.0, 7.0, 6.0])),
    ("step", (slice(None), slice(None, None, 2)), 3.0),
]


@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize("case", ASSIGNMENTS, ids=[c[0] for c in ASSIGNMENTS])
def test_item_assignment_matches_numpy(case, dtype):
    _, index, value = case
    base = np.arange(12).reshape(3, 4).astype(dtype)
    want = base.copy()
    x = torch.tensor(base)
    if callable(index):
        np_index, fg_index = index(want), index(x)
    else:
        np_index = fg_index = index
    if isinstance(value, str):  # as many values as the mask selects
        value = np.arange(int(np.sum(np_index)), dtype=np.float64) * 10
    if isinstance(value, np.ndarray):
        value = value.astype(dtype)
        want[np_index] = value
        x[fg_index] = torch.tensor(value)
    else:
        value = float(value) if dtype == "float32" else int(value)
        want[np_index] = value
        x[fg_index] = value
    assert x.dtype.name == dtype
    np.testing.assert_array_equal(x.numpy(), want)


def test_item_assignment_bumps_version_and_is_seen_through_aliases():
    x = torch.zeros(2, 3)
    alias = x.detach()
    x[x == 0] = 1.0
    x[0, 1] = 4.0
    np.testing.assert_array_equal(alias.numpy(), [[1, 4, 1], [1, 1, 1]])


def test_item_assignment_is_differentiable():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], requires_grad=True)
    v = torch.tensor([10.0, 20.0], requires_grad=True)
    y = x * 1
    y[torch.tensor([0, 2])] = v
    (y * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 2, 0, 4])
    np.testing.assert_array_equal(v.grad.numpy(), [1, 3])


INDICES = [
    (1,),
    (slice(1, None), [0, 2]),
    (slice(None), slice(1, 3)),
    (Ellipsis, -1),
    (None, 0),
    ([2, 0, 2],),
    ([0, 1], [1, 3]),
    (slice(None, None, 2),),
]


@pytest.mark.parametrize("index", INDICES, ids=str)
def test_indexing_matches_numpy(index):
    base = np.arange(12.0).reshape(3, 4)
    x = torch.tensor(base)
    np.testing.assert_array_equal(
        x[index].numpy(), base[tuple(np.asarray(i) if isinstance(i, list) else i for i in index)]
    )
    mask = base % 3 == 0
    np.testing.assert_array_equal(x[torch.tensor(mask)].numpy(), base[mask])


# ----------------------------------------------------------------------------- dtype promotion
TORCH_INDICES = [  # where PyTorch's order or grad_fn names differ from what numpy suggests
    (1, slice(None), [3, 0]),  # ints select first: shape (3, 2), not numpy's (2, 3)
    ([0, 1], 1, [2, 3]),
    (Ellipsis, 1, [0, 2]),
    (None, 1, slice(None), [0, 2]),
    (1, [True, False, True, False]),
    (slice(None), 1, [0, 0, 4]),
    (None, 1),
    (1, None),
    (slice(1, 2), None, slice(None)),
    (Ellipsis,),
    (True,),
    (1, True),
]


@pytest.mark.parametrize("index", TORCH_INDICES, ids=str)
def test_indexing_matches_pytorch(index):
    """Values, grad_fn name and gradient of x[index], and x[index] = v with and without autograd."""
    th = real_torch()
    x = np.arange(60.0).reshape(3, 4, 5)
    got, want = [], []
    for lib, out in ((torch, got), (th, want)):
        a = lib.tensor(x, requires_grad=True)
        r = a[index]
        w = lib.tensor(np.linspace(-1.0, 1.0, r.numel()).reshape(tuple(r.shape)))
        (r * w).sum().backward()
        out += [r.detach().numpy(), r.grad_fn.name(), a.grad.numpy()]
        v = lib.tensor(np.arange(float(r.numel())).reshape(tuple(r.shape)))
        c = lib.tensor(x)
        c[index] = v
        b = a * 1
        vg = v.clone().requires_grad_()
        b[index] = vg
        (b * b).sum().backward()
        out += [c.numpy(), b.detach().numpy(), vg.grad.numpy()]
    for g, t in zip(got, want, strict=True):
        if isinstance(g, str):
            assert g == t
        else:
            assert g.shape == t.shape
            np.testing.assert_array_equal(g, t)


DTYPES = ["bool", "int32", "int64", "float32", "float64"]
OTHERS = [("scalar", True), ("scalar", 2), ("scalar", 2.5)] + [
    (kind, d) for kind in ("0d", "tensor") for d in DTYPES
]


def _make(lib, dtype: str, kind: str):
    dt = getattr(lib, dtype)
    return lib.ones((), dtype=dt) if kind == "0d" else lib.ones(3, dtype=dt)


@pytest.mark.parametrize("other", OTHERS, ids=[f"{k}-{v}" for k, v in OTHERS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_promotion_matches_pytorch(dtype, other):
    th = real_torch()
    kind, o = other
    results = {}
    for lib in (fusegrad, th):
        a = _make(lib, dtype, "tensor")
        b = o if kind == "scalar" else _make(lib, o, kind)
        rs = {
            "add": a + b,
            "radd": b + a,
            "mul": a * b,
            "div": a / b,
            "eq": a == b,
            "where": lib.where(a > 0, a, b),
        }
        if kind != "scalar":
            rs["maximum"] = lib.maximum(a, b)
        if kind == "tensor":
            rs["cat"] = lib.cat([a, b])
        results[lib] = {k: str(v.dtype).split(".")[-1] for k, v in rs.items()}
    want = str(
        th.result_type(_make(th, dtype, "tensor"), o if kind == "scalar" else _make(th, o, kind))
    )
    assert results[fusegrad]["add"] == want.split(".")[-1]
    assert results[fusegrad] == results[th]


def test_promotion_examples_without_torch():
    i = torch.tensor([1, 2, 3])
    assert (i * 1.5).dtype is torch.float32
    assert (i / i).dtype is torch.float32
    assert (i < 2).dtype is torch.bool
    assert i.sum().dtype is torch.int64
    assert torch.tensor([True, False]).sum().dtype is torch.int64
    assert (i + torch.tensor(2.5, dtype=torch.float64)).dtype is torch.float64
    assert (torch.ones(2) + torch.tensor(1.0, dtype=torch.float64)).dtype is torch.float32
    assert (torch.ones(2) + torch.ones(2, dtype=torch.float64)).dtype is torch.float64
    assert torch.tensor(1.5).dtype is torch.float32 and torch.tensor(2).dtype is torch.int64


# ----------------------------------------------------------------------------- printing
def _print_cases():
    rng = np.random.default_rng(1234)
    cases = [
        ("ints", rng.integers(-100, 100, (3, 4)), {}),
        ("big ints", rng.integers(-(10**12), 10**12, (5,)), {}),
        ("int32", rng.integers(-5, 5, (2, 3)).astype(np.int32), {}),
        ("floats", rng.standard_normal((3, 4)).astype(np.float32), {}),
        ("float64", rng.standard_normal((2, 3)), {}),
        ("mixed magnitudes", np.array([1e-5, 1.0, 1e5], np.float32), {}),
        ("int-valued floats", np.array([1.0, 2.0, 3.0], np.float32), {}),
        ("int-valued sci", np.array([1.0, 2e9, 3.0], np.float32), {}),
        ("int-valued ratio", np.array([1.0, 2000.0, 3.0], np.float32), {}),
        ("nan inf", np.array([np.nan, np.inf, -np.inf, 1.5], np.float32), {}),
        ("nan inf ints", np.array([np.nan, np.inf, -np.inf, 1.0], np.float32), {}),
        ("all nan", np.array([np.nan, np.nan], np.float32), {}),
        ("zeros", np.zeros((2, 2), np.float32), {}),
        ("negative zero", np.array([-0.0, 1.0], np.float32), {}),
        ("tenths", np.array([0.1, 0.25, -0.5], np.float32), {}),
        ("edge 1e-4", np.array([0.0001, 0.5], np.float32), {}),
        ("ratio 1000", np.array([0.001, 1.0], np.float32), {}),
        ("ratio > 1000", np.array([0.00099, 1.0], np.float32), {}),
        ("1e8", np.array([1e8, 1.5], np.float32), {}),
        ("bools", rng.random((3, 3)) < 0.5, {}),
        ("0-d float", np.array(3.25, np.float32), {}),
        ("0-d int", np.array(7), {}),
        ("0-d bool", np.array(True), {}),
        ("0-d float64", np.array(2.5), {}),
        ("0-d small", np.array(1e-7, np.float32), {}),
        ("0-d nan", np.array(np.nan, np.float32), {}),
        ("0-d big", np.array(1.5e10, np.float32), {}),
        ("empty", np.zeros((0,), np.float32), {}),
        ("empty 2-d", np.zeros((2, 0), np.float32), {}),
        ("empty float64", np.zeros((0,), np.float64), {}),
        ("summarized 1-d", rng.standard_normal(1001).astype(np.float32), {}),
        ("summarized 2-d", rng.standard_normal((40, 30)).astype(np.float32), {}),
        ("summarized 3-d", rng.integers(0, 10, (11, 10, 10)), {}),
        ("summarized wide rows", rng.standard_normal((2, 600)).astype(np.float32), {}),
        ("summarized float64", rng.standard_normal(1001), {}),
        ("summarized bools", rng.random(1200) < 0.5, {}),
        ("1000 elements", np.arange(1000), {}),
        ("1001 elements", np.arange(1001), {}),
        ("wrapped line", rng.standard_normal(30).astype(np.float32), {}),
        ("wrapped float64", rng.standard_normal(30), {}),
        ("wrapped ints", rng.integers(-1000, 1000, 40), {}),
        ("wrapped sci", (rng.standard_normal(20) * 1e6).astype(np.float32), {}),
        ("wide int rows", rng.integers(-(10**6), 10**6, (3, 30)), {}),
        ("3-d", rng.standard_normal((2, 3, 4)).astype(np.float32), {}),
        ("4-d", rng.integers(0, 5, (2, 2, 2, 2)), {}),
        ("requires grad", rng.standard_normal((2, 2)).astype(np.float32), {"requires_grad": True}),
        ("requires grad float64", rng.standard_normal(12), {"requires_grad": True}),
        (
            "requires grad wrapped",
            rng.standard_normal((3, 20)).astype(np.float32),
            {"requires_grad": True},
        ),
    ]
    for mag in (1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e7, 1e9, 1e12):
        cases.append(
            (f"magnitude {mag:g}", (rng.standard_normal((2, 5)) * mag).astype(np.float32), {})
        )
    for seed in range(20):
        r = np.random.default_rng(seed)
        shape = tuple(int(s) for s in r.integers(1, 6, r.integers(0, 4)))
        scale = 10.0 ** int(r.integers(-6, 10))
        kind = int(r.integers(0, 4))
        if kind == 0:
            arr = (r.standard_normal(shape) * scale).astype(np.float32)
        elif kind == 1:
            arr = r.standard_normal(shape) * scale
        elif kind == 2:
            arr = np.round(r.standard_normal(shape) * scale).astype(np.float32)
        else:
            hi = int(min(scale, 1e12)) + 1
            arr = r.integers(-hi, hi, shape)
        cases.append((f"random {seed}", np.asarray(arr), {}))
    return cases


PRINT_CASES = _print_cases()


@pytest.mark.parametrize("case", PRINT_CASES, ids=[c[0] for c in PRINT_CASES])
def test_repr_matches_pytorch(case):
    th = real_torch()
    _, arr, kw = case
    got = repr(fusegrad.tensor(arr, **kw))
    want = repr(th.tensor(arr, **kw)).replace("torch.", "fusegrad.")
    assert got == want


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((0,), np.int64),
        np.zeros((0, 3), np.int64),
        np.zeros((0,), bool),
        np.zeros((0, 2), np.int32),
        np.zeros((0,), np.float32),
        np.zeros((2, 0), np.float64),
    ],
    ids=["int64", "int64 2-d", "bool", "int32 2-d", "float32", "float64 2-d"],
)
def test_repr_of_empty_non_float_tensors_matches_pytorch(arr):
    th = real_torch()
    assert repr(fusegrad.tensor(arr)) == repr(th.tensor(arr)).replace("torch.", "fusegrad.")


def test_repr_of_results_and_metadata_matches_pytorch():
    th = real_torch()
    x, tx = fusegrad.ones(2, requires_grad=True), th.ones(2, requires_grad=True)
    for a, b in [
        (x * 2, tx * 2),
        (x.sum(), tx.sum()),
        (x.exp().mean(), tx.exp().mean()),
        (x - 1, tx - 1),
    ]:
        assert repr(a) == repr(b)
    assert repr(x.shape) == repr(tx.shape).replace("torch.", "fusegrad.")
    assert repr(x.dtype) == repr(tx.dtype).replace("torch.", "fusegrad.")
    assert repr(x.device) == repr(tx.device)
    t = np.arange(6.0).reshape(2, 3)
    assert str(fusegrad.tensor(t)) == str(th.tensor(t)).replace("torch.", "fusegrad.")
    assert f"{fusegrad.tensor(2.5):.3f}" == f"{th.tensor(2.5):.3f}"


def test_repr_without_torch():
    assert (
        repr(torch.tensor([1.0, 2.0], dtype=torch.float64))
        == "tensor([1., 2.], dtype=fusegrad.float64)"
    )
    assert repr(torch.tensor(True)) == "tensor(True)"
    assert repr(torch.tensor([1, 2])) == "tensor([1, 2])"
    assert repr(torch.zeros(2, 0)) == "tensor([], size=(2, 0))"
    assert repr(torch.tensor([1e-5, 1.0])) == "tensor([1.0000e-05, 1.0000e+00])"
    big = repr(torch.arange(2000))
    assert big == "tensor([   0,    1,    2,  ..., 1997, 1998, 1999])"


# ----------------------------------------------------------------------------- examples
def _run_example(name: str, source: str | None = None) -> str:
    path = os.path.join(EXAMPLES, name)
    cmd = [sys.executable, path] if source is None else [sys.executable, "-c", source]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH")])
        ),
    )
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=EXAMPLES, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


EXAMPLE_LINES = {
    "autograd_basics.py": [
        "tensor([[1., 1.],\n        [1., 1.]], requires_grad=True)",
        "tensor([[3., 3.],\n        [3., 3.]], grad_fn=<AddBackward0>)",
        "<AddBackward0 object at 0x",
        "grad_fn=<MulBackward0>) tensor(27., grad_fn=<MeanBackward0>)",
        "False\nTrue\n<SumBackward0 object at 0x",
        "tensor([[4.5000, 4.5000],\n        [4.5000, 4.5000]])",
        "True\nTrue\nFalse\nTrue\nFalse\ntensor(True)\n",
    ],
    "tensor_basics.py": [
        "tensor([[1, 2, 3],\n        [4, 5, 6]])",
        "tensor([0, 1, 2], dtype=fusegrad.int32)",
        "tensor([0, 2, 1]) fusegrad.int64",
        "tensor([17.], grad_fn=<AddBackward0>)",
        "tensor([5.])\ntensor([3.])\ntensor([1.])",
        "tensor([25.])\ntensor([15.])\ntensor([5.])",
    ],
    "computation_graph.py": [
        "tensor(3., grad_fn=<AddBackward0>) tensor(2., grad_fn=<AddBackward0>) "
        "tensor(6., grad_fn=<MulBackward0>)",
        "de/dc = tensor(2.)",
        "de/da = tensor(2.)",
        "de/db = tensor(5.)",
    ],
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_LINES))
def test_example_runs_and_prints(name):
    out = _run_example(name)
    for line in EXAMPLE_LINES[name]:
        assert line in out, f"{line!r} not in the output of {name}:\n{out}"
    if name == "autograd_basics.py":  # x.grad after the while loop is v * 2**k
        m = re.search(r"tensor\(\[(\S+), (\S+), (\S+)\]\)\nTrue", out)
        g = [float(v) for v in m.groups()]
        k = round(np.log2(g[1]))
        np.testing.assert_allclose(g, np.array([0.1, 1.0, 0.0001]) * 2.0**k, rtol=1e-3)
    if name == "tensor_basics.py" and not fusegrad.cuda.is_available():
        assert "CUDA is not available; tensors stay on cpu" in out


_EXAMPLES_VS_TORCH = ["tensor_basics.py", "computation_graph.py"]


@pytest.mark.parametrize("name", _EXAMPLES_VS_TORCH)
def test_example_prints_what_pytorch_prints(name):
    """The deterministic examples print exactly what the same script prints with PyTorch."""
    real_torch()
    with open(os.path.join(EXAMPLES, name), encoding="utf-8") as f:
        source = f.read()
    assert "import fusegrad as torch\n" in source
    ours = _run_example(name)
    theirs = _run_example(name, source.replace("import fusegrad as torch\n", "import torch\n"))
    assert ours == theirs.replace("torch.", "fusegrad.")


# ----------------------------------------------------------------------------- edge values
EDGE_GRADS = [
    ("max(dim) ties", [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], lambda x: x.max(dim=1)[0]),
    ("min(dim) ties", [[1.0, 1.0, 3.0]], lambda x: x.min(1).values),
    ("max(dim, keepdim) ties", [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], lambda x: x.max(0, True)[0]),
    ("max() ties", [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], lambda x: x.max()),
    ("amax(dim) ties", [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0]], lambda x: x.amax(dim=1)),
    ("maximum ties", [1.0, 3.0, 3.0], lambda x: x.maximum(x * 0 + 3.0)),
    ("clamp at bound", [1.0, 3.0, 4.0], lambda x: x.clamp(min=3.0)),
    ("clamp tensor bounds crossed", [1.0, 3.0, 4.0], lambda x: x.clamp(x * 0 + 3.0, x * 0 + 2.0)),
    ("relu at 0", [-1.0, 0.0, 2.0], lambda x: x.relu()),
    ("abs at 0", [-1.0, 0.0, 2.0], lambda x: x.abs()),
    ("sqrt at 0", [0.0, 4.0], lambda x: x.sqrt()),
    ("pow 2.5 at 0", [0.0, 2.0], lambda x: x**2.5),
    ("pow -1 at 0", [0.0, 2.0], lambda x: x**-1.0),
    ("pow tensor base 0", [0.0, 2.0], lambda x: x ** (x * 0 + 2.0)),
    ("pow tensor 0 ** 0", [0.0, 2.0], lambda x: x ** (x * 0)),
    ("rpow 0 ** x", [2.0, 3.0], lambda x: (x * 0) ** x),
    ("rpow scalar 0 ** x", [2.0, 0.0, -1.0], lambda x: 0.0**x),
    ("rpow scalar 2 ** x", [2.0, 0.0, -1.0], lambda x: 2.0**x),
]


@pytest.mark.parametrize("case", EDGE_GRADS, ids=[c[0] for c in EDGE_GRADS])
def test_edge_gradients_match_pytorch(case):
    th = real_torch()
    _, data, fn = case
    results = []
    for lib in (fusegrad, th):
        x = lib.tensor(data, requires_grad=True)
        y = fn(x)
        y.sum().backward()
        results.append((y.detach().numpy(), x.grad.numpy()))
    (y, g), (ty, tg) = results
    np.testing.assert_array_equal(y, ty)
    np.testing.assert_array_equal(g, tg)


def test_pow_tensor_exponent_gradient_at_zero_base():
    a = torch.tensor([0.0, 2.0])
    b = torch.tensor([2.0, 3.0], requires_grad=True)
    (a**b).sum().backward()
    assert b.grad[0].item() == 0.0


_QUIET = [  # (name, fn(lib)): each returns inf/nan/garbage silently in PyTorch
    ("0 * inf", lambda t: t.tensor([0.0]) * float("inf")),
    ("inf - inf", lambda t: t.tensor([float("inf")]) - float("inf")),
    ("overflow mul", lambda t: t.tensor([1e30]) * 1e30),
    ("overflow sum", lambda t: t.tensor([3e38, 3e38]).sum()),
    ("mean of empty", lambda t: t.zeros(0).mean()),
    ("mean of empty dim", lambda t: t.zeros(0, 2).mean(0)),
    ("nan to int", lambda t: t.tensor([float("nan")]).long()),
    ("0 / 0", lambda t: t.tensor([0.0]) / 0.0),
    ("log 0", lambda t: t.tensor([0.0, -1.0]).log()),
    ("exp overflow", lambda t: t.tensor([1000.0]).exp()),
    ("rsqrt 0", lambda t: t.tensor([0.0]).rsqrt()),
    ("pow overflow", lambda t: t.tensor([1e30]) ** 2),
]


@pytest.mark.parametrize("case", _QUIET, ids=[c[0] for c in _QUIET])
def test_inf_and_nan_results_are_silent(case):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = case[1](torch)
    want = case[1](real_torch())
    assert got.dtype.name == str(want.dtype).split(".")[1] and tuple(got.shape) == tuple(want.shape)
    if case[0] != "nan to int":  # the integer value of nan is unspecified
        np.testing.assert_array_equal(got.numpy(), want.numpy())


# ----------------------------------------------------------------------------- dispatch
def test_promotion_rule_runs_once_per_op_and_input_dtypes(monkeypatch):
    """Eager dispatch caches an elementwise op's dtype plan by its inputs' dtypes (and whether
    each is a dimensioned tensor, a 0-d tensor or a Python scalar)."""
    mul = fusegrad.ops.REGISTRY["mul"]
    monkeypatch.setattr(mul, "plans", {})
    calls = []
    real = type(mul).result_dtype
    monkeypatch.setattr(type(mul), "result_dtype", lambda self, p: calls.append(p) or real(self, p))
    a, b = torch.ones(3), torch.ones(3, dtype=torch.float64)
    for _ in range(3):
        assert (a * a).dtype is torch.float32 and (a * b).dtype is torch.float64
        assert (a * torch.ones((), dtype=torch.float64)).dtype is torch.float32
        assert (torch.tensor([1, 2]) * 1.5).dtype is torch.float32
        assert (a * 2).dtype is torch.float32
    assert len(calls) == 5
