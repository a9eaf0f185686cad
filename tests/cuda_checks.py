"""The CUDA backend's checks: every value is compared with CPU eager mode (or numpy).

This file is not collected on its own (its name does not match ``test_*.py``). It runs twice:

- under Numba's CUDA simulator, in a child pytest process that test_cuda_sim.py starts with
  ``NUMBA_ENABLE_CUDASIM=1`` (the flag must be set before ``numba.cuda`` is imported, and a
  real-GPU run in the parent process must not see it);
- on a real GPU, through test_cuda.py, which imports these tests under the ``gpu`` marker
  (skipped unless ``fusegrad.cuda.is_available()`` and not simulating).

The simulator runs each GPU thread as a Python thread, so shapes are tiny.
"""

from __future__ import annotations

import math
import random
import re
import sys

import numpy as np
import pytest
from samples import SAMPLES

import fusegrad
import fusegrad.nn as nn
from fusegrad import device_array, runtime_cuda
from fusegrad.errors import CompileError
from fusegrad.ops import REGISTRY

if fusegrad.cuda.is_simulator():
    # The simulator's block manager busy-polls its threads; a short GIL switch interval lets
    # the simulated threads run (about 3x faster here). Only this test process is affected.
    sys.setswitchinterval(1e-4)

RTOL, ATOL = 1e-5, 1e-6


def _cpu(t) -> np.ndarray:
    return t.detach().cpu().numpy()


def _inputs(sample, device: str, requires_grad: bool = False) -> list:
    out = []
    for a in sample.args:
        if isinstance(a, np.ndarray):
            floating = a.dtype.kind == "f"
            arr = a.astype(np.float32) if floating else a
            out.append(
                fusegrad.tensor(arr, device=device, requires_grad=requires_grad and floating)
            )
        else:
            out.append(a)
    return out


# ----------------------------------------------------------------------------- device tensors
@pytest.mark.skipif(not fusegrad.cuda.is_simulator(), reason="a fix for Numba's simulator")
def test_simulated_block_threads_share_one_shared_array(monkeypatch):
    """The simulator's shared-array lookup is racy (two threads of a block could each get their
    own uninitialised array: block reductions read garbage about once in forty runs);
    fusegrad.cuda locks it. A slow allocation opens the window wide for every thread."""
    import threading
    import time

    from numba.cuda.simulator.kernelapi import FakeCUDAShared

    real_empty = np.empty

    def slow_empty(*a, **k):
        time.sleep(0.002)
        return real_empty(*a, **k)

    monkeypatch.setattr(np, "empty", slow_empty)
    shared, start, got = FakeCUDAShared(0), threading.Barrier(8), []

    def thread():
        start.wait()
        got.append(shared.array(4, np.float32))  # one call site: one array per block

    threads = [threading.Thread(target=thread) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(a is got[0] for a in got)


def test_device_tensors_creation_copies_and_metadata():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    t = fusegrad.tensor(a)
    g = t.cuda()
    assert g.is_cuda and not t.is_cuda
    assert str(g.device) == "cuda:0" and g.device.type == "cuda"
    assert g.shape == (2, 3) and g.dtype is fusegrad.float32
    np.testing.assert_array_equal(g.cpu().numpy(), a)
    assert g.cpu().device.type == "cpu"
    np.testing.assert_array_equal(t.to("cuda").cpu().numpy(), a)
    np.testing.assert_array_equal(g.to("cpu").numpy(), a)
    assert g.to("cuda") is g
    np.testing.assert_array_equal(g.numpy(), a)  # a host copy, as the user asked
    assert g.tolist() == a.tolist() and g[1, 2].item() == 5.0
    d = g.to("cuda", fusegrad.float64)
    assert d.is_cuda and d.dtype is fusegrad.float64
    np.testing.assert_array_equal(d.cpu().numpy(), a)
    assert repr(g) == "tensor([[0., 1., 2.],\n        [3., 4., 5.]], device='cuda:0')"

    np.testing.assert_array_equal(
        fusegrad.zeros(2, 3, device="cuda").cpu().numpy(), np.zeros((2, 3))
    )
    np.testing.assert_array_equal(
        fusegrad.ones(4, device="cuda", dtype=fusegrad.int64).cpu().numpy(), np.ones(4)
    )
    np.testing.assert_array_equal(fusegrad.full((2,), 7.5, device="cuda").cpu().numpy(), [7.5, 7.5])
    np.testing.assert_array_equal(fusegrad.arange(5, device="cuda").cpu().numpy(), np.arange(5))
    np.testing.assert_array_equal(
        fusegrad.tensor([True, False], device="cuda").cpu().numpy(), [True, False]
    )
    fusegrad.manual_seed(3)
    r_cpu = fusegrad.randn(3, 2)
    fusegrad.manual_seed(3)
    r_gpu = fusegrad.randn(3, 2, device="cuda")  # same generator, same numbers
    np.testing.assert_array_equal(r_gpu.cpu().numpy(), r_cpu.numpy())
    z = fusegrad.zeros_like(g)
    assert z.is_cuda and fusegrad.ones_like(g).is_cuda and fusegrad.full_like(g, 2).is_cuda
    np.testing.assert_array_equal(z.cpu().numpy(), np.zeros((2, 3)))


def test_zeros_ones_full_on_cuda_copy_nothing_to_the_device():
    before = dict(device_array.TRANSFERS)
    fusegrad.zeros(3, 2, device="cuda")
    fusegrad.ones(5, device="cuda")
    fusegrad.full((2, 2), 3.0, device="cuda")
    assert device_array.TRANSFERS == before


def test_module_to_cuda_keeps_parameter_identity_and_values():
    fusegrad.manual_seed(0)
    lin = nn.Linear(3, 2)
    w, want = lin.weight, lin.weight.detach().numpy().copy()
    assert lin.to("cuda") is lin and lin.weight is w
    assert lin.weight.is_cuda and lin.bias.is_cuda and isinstance(lin.weight, nn.Parameter)
    np.testing.assert_array_equal(_cpu(lin.weight), want)
    lin.cpu()
    assert not lin.weight.is_cuda
    np.testing.assert_array_equal(lin.weight.detach().numpy(), want)


def test_to_cuda_is_differentiable_back_to_the_cpu():
    x = fusegrad.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x.cuda()
    assert y.grad_fn.name() == "ToCopyBackward0"
    (y * y).sum().backward()
    assert not x.grad.is_cuda
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])


def test_mixing_devices_is_an_error_naming_op_and_devices():
    a = fusegrad.ones(3, device="cuda")
    b = fusegrad.ones(3)
    for fn, op in [(lambda: a + b, "add"), (lambda: b * a, "mul"), (lambda: a @ b, "matmul")]:
        with pytest.raises(RuntimeError, match=rf"{op}: .*cuda:0 and cpu"):
            fn()

    @fusegrad.compile(backend="cuda")
    def mixed(x, y):
        return (x * 2) + y

    with pytest.raises(RuntimeError, match=r"add: .*cuda:0 and cpu.*cuda_checks.py"):
        mixed(a, b)

    with pytest.raises(RuntimeError, match="tensors are on cpu"):
        fusegrad.compile(lambda x: x * 2, backend="cuda")(b)
    with pytest.raises(RuntimeError, match="tensors are on cuda"):
        fusegrad.compile(lambda x: x * 2, backend="cpu")(a)
    with pytest.raises(ValueError, match="backend"):
        fusegrad.compile(lambda x: x, backend="tpu")


def test_in_place_updates_and_item_assignment_on_cuda():
    g = fusegrad.zeros(4, device="cuda")
    g += 1.5
    g.mul_(2.0)
    np.testing.assert_array_equal(g.cpu().numpy(), [3.0] * 4)
    before = dict(device_array.TRANSFERS)
    g[1] = 7.0  # index_put on the device
    g[fusegrad.tensor([0, 3], device="cuda")] = g[1] * 2
    assert device_array.TRANSFERS == before
    np.testing.assert_array_equal(g.cpu().numpy(), [14.0, 7.0, 3.0, 14.0])
    g.copy_(fusegrad.tensor([1.0, 2.0, 3.0, 4.0]))  # copy_ from the CPU: one upload
    np.testing.assert_array_equal(g.cpu().numpy(), [1.0, 2.0, 3.0, 4.0])
    g.zero_()
    np.testing.assert_array_equal(g.cpu().numpy(), [0.0] * 4)


# ----------------------------------------------------------------------------- every registry op
_EAGER_SKIP = {"mm_t": "reached through linear", "index_grad": "reached through getitem's backward"}


# update ops (optimizer steps) are checked by the training tests below
@pytest.mark.parametrize("name", sorted(n for n, op in REGISTRY.items() if n not in _EAGER_SKIP
                                        and op.kind != "update" and n != "updated"))
def test_eager_op_on_cuda_matches_cpu(name):
    s = SAMPLES[name][0]
    want = s.call(*_inputs(s, "cpu"))
    got = s.call(*_inputs(s, "cuda"))
    assert got.is_cuda and got.dtype is want.dtype and tuple(got.shape) == tuple(want.shape)
    np.testing.assert_allclose(_cpu(got), _cpu(want), rtol=RTOL, atol=ATOL)


# The compiled checks cover each op family; each compiles forward + backward kernels.
_COMPILED = [
    "add",
    "mul",
    "div",
    "pow_scalar",
    "exp",
    "log",
    "tanh",
    "sigmoid",
    "gelu",
    "relu",
    "where",
    "clamp",
    "cast",
    "expand",
    "sum",
    "mean",
    "amax",
    "all",
    "reshape",
    "permute",
    "getitem",
    "matmul",
    "linear",
    "cat",
    "argmax",
    "index_put",
]


@pytest.mark.parametrize("name", _COMPILED)
def test_compiled_cuda_matches_cpu_eager(name):
    s = SAMPLES[name][0]
    results = []
    for device, compiled in (("cpu", False), ("cuda", True)):
        xs = _inputs(s, device, requires_grad=True)

        def step(*args):
            out = s.call(*args)
            if out.requires_grad:
                (out * out).sum().backward()
            return out

        fn = fusegrad.compile(step, backend="cuda") if compiled else step
        out = fn(*xs)
        results.append((out, [x.grad for x in xs if isinstance(x, fusegrad.Tensor)]))
    (want, want_grads), (got, got_grads) = results
    assert got.is_cuda and got.dtype is want.dtype
    np.testing.assert_allclose(_cpu(got), _cpu(want), rtol=RTOL, atol=ATOL)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.is_cuda
            np.testing.assert_allclose(_cpu(a), _cpu(b), rtol=RTOL, atol=ATOL)
    assert fn.stats.graphs_compiled == 1


# ----------------------------------------------------------------------------- reductions, matmul
@pytest.mark.parametrize(
    "dims,keepdim", [(None, False), ((0,), False), ((1,), True), ((0, 2), False), ((2,), False)]
)
def test_reductions_over_any_dims(dims, keepdim):
    x = np.random.default_rng(1).standard_normal((3, 4, 5)).astype(np.float32)

    def f(t):
        return (
            t.sum(dims, keepdim) * 0.5,
            (t * t).mean(dims, keepdim),
            t.amax(dims or (), keepdim),
            (t > 0).any(dims, keepdim),
        )

    want = f(fusegrad.tensor(x))
    eager = f(fusegrad.tensor(x, device="cuda"))
    compiled = fusegrad.compile(f, backend="cuda")(fusegrad.tensor(x, device="cuda"))
    for w, e, c in zip(want, eager, compiled, strict=True):
        assert e.dtype is w.dtype and c.dtype is w.dtype
        np.testing.assert_allclose(_cpu(e), w.numpy(), rtol=RTOL, atol=ATOL)
        np.testing.assert_allclose(_cpu(c), w.numpy(), rtol=RTOL, atol=ATOL)


def test_max_and_min_propagate_nan():
    x = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    x[1, 3] = x[2, 0] = np.nan

    def f(t):
        return t.amax(1), t.amin(0), t.amax()

    want = f(fusegrad.tensor(x))
    compiled = fusegrad.compile(f, backend="cuda")(fusegrad.tensor(x, device="cuda"))
    for w, c in zip(want, compiled, strict=True):
        np.testing.assert_array_equal(_cpu(c), w.numpy())


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((5, 3), (3, 4)),
        ((3,), (3, 2)),
        ((4, 3), (3,)),
        ((2, 3, 4), (4, 5)),
        ((3, 4), (2, 4, 5)),
        ((2, 3, 2), (2, 2, 3)),
        ((2, 1, 2, 3), (3, 3, 2)),
    ],
)
def test_matmul_shapes(sa, sb):
    r = np.random.default_rng(2)
    a, b = r.standard_normal(sa).astype(np.float32), r.standard_normal(sb).astype(np.float32)
    got = fusegrad.tensor(a, device="cuda") @ fusegrad.tensor(b, device="cuda")
    np.testing.assert_allclose(_cpu(got), a @ b, rtol=1e-5, atol=1e-5)
    f = fusegrad.compile(lambda x, y: (x @ y) * 2.0, backend="cuda")
    got = f(fusegrad.tensor(a, device="cuda"), fusegrad.tensor(b, device="cuda"))
    np.testing.assert_allclose(_cpu(got), (a @ b) * 2.0, rtol=1e-5, atol=1e-5)


def test_matmul_float64_and_int64():
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    got = fusegrad.tensor(a, device="cuda") @ fusegrad.tensor(a.T.copy(), device="cuda")
    np.testing.assert_array_equal(_cpu(got), a @ a.T)
    d = a.astype(np.float64) / 7
    got = fusegrad.tensor(d, device="cuda") @ fusegrad.tensor(d.T.copy(), device="cuda")
    assert got.dtype is fusegrad.float64
    np.testing.assert_allclose(_cpu(got), d @ d.T, rtol=1e-12)


# ----------------------------------------------------------------------------- training steps
def _run_steps(fn, x, y, steps: int) -> tuple[list, list]:
    """Each step's loss (one item() each) and the host <-> device copies the step made."""
    losses, transfers = [], []
    for _ in range(steps):
        before = dict(device_array.TRANSFERS)
        losses.append(fn(x, y).item())
        transfers.append({k: device_array.TRANSFERS[k] - before[k] for k in before})
    return losses, transfers


def _mlp_run(device: str, compiled: bool, make_opt, steps: int = 3):
    fusegrad.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    model.to(device)
    opt = make_opt(model.parameters())
    loss_fn = nn.MSELoss()

    def step(x, y):
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    r = np.random.default_rng(0)
    x = fusegrad.tensor(r.standard_normal((6, 5)).astype(np.float32), device=device)
    y = fusegrad.tensor(r.standard_normal((6, 3)).astype(np.float32), device=device)
    fn = fusegrad.compile(step, backend="auto") if compiled else step
    losses, transfers = _run_steps(fn, x, y, steps)
    return losses, model, opt, fn, transfers


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: fusegrad.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda p: fusegrad.optim.Adam(p, lr=0.01),
    ],
    ids=["sgd_momentum", "adam"],
)
def test_mlp_training_on_cuda_matches_cpu(make_opt):
    want, ref_model, _, _, _ = _mlp_run("cpu", False, make_opt)
    eager, _, _, _, _ = _mlp_run("cuda", False, make_opt)
    got, model, opt, fn, transfers = _mlp_run("cuda", True, make_opt)
    np.testing.assert_allclose(eager, want, rtol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert p.is_cuda and p.grad.is_cuda
        np.testing.assert_allclose(_cpu(p), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, fusegrad.Tensor) and v.dim() > 0:
                assert v.is_cuda  # optimizer state lives on the device
    # a cached step copies nothing between host and device; only item() copies the loss back
    assert transfers[-1] == {"to_device": 0, "to_host": 1}
    assert fn.stats.graph_hits >= 1 and fn.stats.kernel_hits > 0


def test_verify_mode_on_cuda_compares_with_cpu_eager():
    fusegrad.manual_seed(0)
    lin = nn.Linear(3, 2).cuda()
    x = fusegrad.randn(4, 3, device="cuda")
    f = fusegrad.compile(lambda x: lin(x).relu().sum(), backend="cuda", verify=True)
    np.testing.assert_allclose(f(x).item(), lin(x).relu().sum().item(), rtol=1e-5)


def test_graph_break_item_inside_compiled_cuda_step():
    x = fusegrad.tensor([1.0, -2.0, 3.0], device="cuda")

    @fusegrad.compile(backend="cuda")
    def f(x):
        s = (x * x).sum()
        if s.item() > 10:  # a realization point: the pending graph runs here
            return x * 2
        return x

    np.testing.assert_array_equal(_cpu(f(x)), [2.0, -4.0, 6.0])
    assert f.stats.graph_breaks == 1


class DynamicNet(nn.Module):
    def __init__(self, d_in, h, d_out):
        super().__init__()
        self.input_linear = nn.Linear(d_in, h)
        self.middle_linear = nn.Linear(h, h)
        self.output_linear = nn.Linear(h, d_out)

    def forward(self, x):
        h_relu = self.input_linear(x).clamp(min=0)
        for _ in range(random.randint(0, 3)):
            h_relu = self.middle_linear(h_relu).clamp(min=0)
        return self.output_linear(h_relu)


def _dynamic_net(device: str, compiled: bool, steps: int):
    fusegrad.manual_seed(0)
    model = DynamicNet(6, 5, 3).to(device)
    criterion = nn.MSELoss(reduction="sum")
    opt = fusegrad.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    x = fusegrad.randn(4, 6, device=device)
    y = fusegrad.randn(4, 3, device=device)

    def step(x, y):
        loss = criterion(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    fn = fusegrad.compile(step, backend="auto") if compiled else step
    random.seed(0)
    return [fn(x, y).item() for _ in range(steps)], model, fn


def test_dynamic_net_compiled_on_cuda_matches_cpu_eager():
    want, ref, _ = _dynamic_net("cpu", False, 6)
    got, model, fn = _dynamic_net("cuda", True, 6)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(_cpu(p), q.detach().numpy(), rtol=1e-4, atol=1e-6)
    s = fn.stats
    assert s.calls == 6 and s.graphs_compiled + s.graph_hits == 6 and s.kernel_hits > 0


# ----------------------------------------------------------------------------- renderer, caches
def test_eager_ops_are_cached_one_op_plans():
    x = fusegrad.tensor([[1.0, 2.0], [3.0, 4.0]], device="cuda")
    x.sigmoid()
    before = runtime_cuda.EAGER_STATS.graphs_compiled
    for v in (0.5, 1.5, 2.5):  # a Python scalar is a runtime argument: no new plan
        y = (x * v).sigmoid()
    assert runtime_cuda.EAGER_STATS.graphs_compiled == before + 1  # mul once; sigmoid reused
    np.testing.assert_allclose(
        _cpu(y), 1 / (1 + np.exp(-2.5 * np.array([[1, 2], [3, 4]]))), rtol=1e-6
    )


def test_kernels_are_cuda_sources_in_the_cache_folder_and_shared_between_graphs():
    f = fusegrad.compile(lambda x: (x.exp() * 3.0).sum(1), backend="cuda")
    f(fusegrad.ones(2, 3, device="cuda"))
    ex = next(iter(f.graphs.values()))
    assert isinstance(ex, runtime_cuda.Executable)
    for name, path, src in ex.sources:
        assert "@cuda.jit(cache=True)" in src and "cuda.shared.array" in src
        text = open(path).read()
        assert "from numba import cuda" in text and name in text
    f(fusegrad.ones(4, 3, device="cuda"))  # new batch size: a new graph, the same kernels
    assert f.stats.graphs_compiled == 2 and f.stats.kernel_hits >= 1
    np.testing.assert_allclose(
        _cpu(f(fusegrad.ones(4, 3, device="cuda"))), [3 * 3 * math.e] * 4, rtol=1e-6
    )


def test_unknown_plan_step_kind_is_a_compile_error():
    from fusegrad import fuse
    from fusegrad.trace import Graph

    plan = fuse.Plan(Graph([], [], [], ()), [], [fuse.Step("tiles", 0)], [], [])
    with pytest.raises(CompileError, match="does not know plan step kind 'tiles'"):
        runtime_cuda.Executable(plan, runtime_cuda.EagerStats())


def test_loop_kernel_source_is_grid_stride_and_block_reduction():
    f = fusegrad.compile(lambda x, y: (x * 2.0 + 1.0, (y * y).sum(0)), backend="cuda")
    f(fusegrad.ones(3, 2, device="cuda"), fusegrad.ones(4, 2, device="cuda"))  # two loops
    srcs = [src for _, _, src in next(iter(f.graphs.values())).sources]
    assert any("cuda.grid(1)" in s and "cuda.gridsize(1)" in s for s in srcs)
    red = [s for s in srcs if "cuda.shared.array" in s]
    assert red and all("cuda.syncthreads()" in s for s in red)
    assert re.search(r"for k in range\(cuda.blockIdx.x, .*cuda.gridDim.x\)", red[0])


def test_cross_entropy_and_cpu_index_tensors_on_cuda():
    fusegrad.manual_seed(0)
    x = fusegrad.randn(4, 3)
    y = fusegrad.tensor([0, 2, 1, 2])
    xc = x.cuda().requires_grad_()
    loss = nn.CrossEntropyLoss()(xc, y.cuda())
    loss.backward()
    xr = x.clone().requires_grad_()
    want = nn.CrossEntropyLoss()(xr, y)
    want.backward()
    np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-6)
    np.testing.assert_allclose(_cpu(xc.grad), xr.grad.numpy(), rtol=1e-5, atol=1e-7)
    f = fusegrad.compile(lambda a, b: nn.functional.cross_entropy(a, b), backend="cuda")
    np.testing.assert_allclose(f(x.cuda(), y.cuda()).item(), want.item(), rtol=1e-6)
    # index tensors may stay on the CPU next to a CUDA tensor, as in PyTorch
    idx = fusegrad.tensor([2, 0])
    np.testing.assert_array_equal(_cpu(x.cuda()[idx]), x.numpy()[[2, 0]])


def test_deepcopy_and_pickle_of_cuda_modules():
    import copy
    import pickle

    fusegrad.manual_seed(0)
    lin = nn.Linear(3, 2).cuda()
    twin = copy.deepcopy(lin)
    back = pickle.loads(pickle.dumps(lin))
    for m in (twin, back):
        assert m.weight.is_cuda
        np.testing.assert_array_equal(_cpu(m.weight), _cpu(lin.weight))
    with fusegrad.no_grad():
        twin.weight.zero_()
    assert _cpu(lin.weight).any()  # the copy does not share device memory
    lin.load_state_dict({k: v.cpu() for k, v in back.state_dict().items()})
    assert lin.weight.is_cuda


# ----------------------------------------------------------------------------- ops on the device
def _ix(v, device: str):
    return fusegrad.tensor(np.array(v, dtype=np.int64), device=device)


_INDEXES = {
    "int": lambda t, d: t[1],
    "slices": lambda t, d: t[:, 1:3],
    "step_ellipsis": lambda t, d: t[..., ::2],
    "none_int_negative": lambda t, d: t[None, 1, :, -1],
    "scalar": lambda t, d: t[2, 3, 4],
    "tensor": lambda t, d: t[_ix([2, -1, 0, 2], d)],
    "tensor_dim1": lambda t, d: t[:, _ix([0, 3, -2, 0], d)],
    "int_then_tensor": lambda t, d: t[1, :, _ix([4, 0, 4], d)],
    "split_tensors": lambda t, d: t[_ix([0, 2, 0], d), :, _ix([1, 3, 1], d)],
    "broadcast_tensors": lambda t, d: t[_ix([[0], [2]], d), _ix([1, 3, 0, 1], d)],
    "zero_dim_tensor": lambda t, d: t[:, _ix(2, d)],
}


def _no_host_round_trip(ex) -> bool:
    return "host round trip" not in ex.driver_src


@pytest.mark.parametrize("case", sorted(_INDEXES))
def test_indexing_and_its_gradient_run_on_the_device(case):
    """getitem (gather kernel or a view) and index_grad (atomic scatter-add: repeated indices
    accumulate) eagerly and compiled, values and gradients equal to CPU eager."""
    f = _INDEXES[case]
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5) / 7
    results = []
    for device, compiled in (("cpu", False), ("cuda", False), ("cuda", True)):
        t = fusegrad.tensor(x, device=device, requires_grad=True)

        def step(t, device=device):
            y = f(t, device)
            (y * y * 1.5).sum().backward()
            return y

        fn = fusegrad.compile(step, backend="cuda") if compiled else step
        results.append((_cpu(fn(t)), _cpu(t.grad)))
        if compiled:
            assert all(_no_host_round_trip(ex) for ex in fn.graphs.values())
    for y, g in results[1:]:
        np.testing.assert_allclose(y, results[0][0], rtol=RTOL)
        np.testing.assert_allclose(g, results[0][1], rtol=RTOL)


def test_index_put_on_the_device_matches_cpu():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    for device in ("cpu", "cuda"):
        t = fusegrad.tensor(x, device=device)
        t[_ix([2, -3], device)] = fusegrad.tensor([9.0, 8.0, 7.0, 6.0], device=device)
        t[:, _ix([1], device)] = 5.0
        t[1, 1:3] = fusegrad.tensor([-1.0, -2.0], device=device)
        if device == "cpu":
            want = _cpu(t)
    np.testing.assert_array_equal(_cpu(t), want)

    def step(a, v):
        a = a * 1.0
        a[_ix([0, 2], a.device.type), 1:] = v
        (a * a).sum().backward()
        return a

    got = []
    for device, compiled in (("cpu", False), ("cuda", True)):
        a = fusegrad.tensor(x, device=device, requires_grad=True)
        v = fusegrad.tensor([1.0, 2.0, 3.0], device=device, requires_grad=True)
        fn = fusegrad.compile(step, backend="cuda") if compiled else step
        got.append((_cpu(fn(a, v)), _cpu(a.grad), _cpu(v.grad)))
        if compiled:
            assert all(_no_host_round_trip(ex) for ex in fn.graphs.values())
    for w, g in zip(got[0], got[1], strict=True):
        np.testing.assert_allclose(g, w, rtol=RTOL)


def test_cat_and_stack_on_the_device_match_cpu():
    r = np.random.default_rng(6)
    a = r.standard_normal((2, 3)).astype(np.float32)
    b = r.standard_normal((2, 1)).astype(np.float32)
    c = np.arange(6, dtype=np.int64).reshape(2, 3)

    def f(x, y, z):
        return (fusegrad.cat([x, y, x], 1), fusegrad.cat([x, x], 0), fusegrad.stack([x, z], -1),
                fusegrad.cat([x, z.to(fusegrad.float32)], -1) * 2.0)

    want = f(*(fusegrad.tensor(v) for v in (a, b, c)))
    args = [fusegrad.tensor(v, device="cuda") for v in (a, b, c)]
    fn = fusegrad.compile(f, backend="cuda")
    for got in (f(*args), fn(*args)):
        for g, w in zip(got, want, strict=True):
            assert g.is_cuda and g.dtype is w.dtype
            np.testing.assert_array_equal(_cpu(g), _cpu(w))
    assert all(_no_host_round_trip(ex) for ex in fn.graphs.values())


def test_argmax_argmin_on_the_device_first_index_on_ties():
    x = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [5, -1, 5, -1]], dtype=np.float32)
    x3 = np.random.default_rng(7).integers(0, 3, (2, 5, 3)).astype(np.float32)  # many ties
    nan = np.array([1.0, np.nan, 4.0, np.nan], dtype=np.float32)
    calls = [
        (x, lambda t: t.argmax()), (x, lambda t: t.argmin()), (x, lambda t: t.argmax(1)),
        (x, lambda t: t.argmin(0, keepdim=True)), (x, lambda t: t.argmax(-1, keepdim=True)),
        (x3, lambda t: t.argmax(1)), (x3, lambda t: t.argmin(2)), (x3, lambda t: t.argmax(0)),
        (nan, lambda t: t.argmax()), (nan, lambda t: t.argmin()),
        (x.astype(np.int64), lambda t: t.argmax(1)),
    ]
    for arr, f in calls:
        want = f(fusegrad.tensor(arr))
        for got in (f(fusegrad.tensor(arr, device="cuda")),
                    fusegrad.compile(f, backend="cuda")(fusegrad.tensor(arr, device="cuda"))):
            assert got.dtype is fusegrad.int64 and tuple(got.shape) == tuple(want.shape)
            np.testing.assert_array_equal(_cpu(got), want.numpy())


def test_integer_arange_is_made_on_the_device_without_an_upload():
    before = dict(device_array.TRANSFERS)
    a = fusegrad.arange(2, 11, 3, device="cuda")
    assert device_array.TRANSFERS == before
    np.testing.assert_array_equal(_cpu(a), [2, 5, 8])


def _classifier_run(device: str, compiled: bool, gather: bool, steps: int = 3):
    fusegrad.manual_seed(0)
    model = nn.Linear(5, 3).to(device)
    opt = fusegrad.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step(x, y):
        out = model(x)
        if gather:  # NLL by advanced indexing: a gather forward, a scatter-add backward
            logp = out.log_softmax(1)
            loss = -logp[fusegrad.arange(x.shape[0], device=x.device), y].mean()
        else:
            loss = loss_fn(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    r = np.random.default_rng(1)
    x = fusegrad.tensor(r.standard_normal((4, 5)).astype(np.float32), device=device)
    y = fusegrad.tensor(np.array([0, 2, 1, 2]), device=device)
    fn = fusegrad.compile(step, backend="auto") if compiled else step
    losses, transfers = _run_steps(fn, x, y, steps)
    return losses, model, fn, transfers


@pytest.mark.parametrize("gather", [False, True], ids=["cross_entropy", "nll_by_indexing"])
def test_classifier_step_on_cuda_copies_nothing_but_the_loss(gather):
    want, ref, _, _ = _classifier_run("cpu", False, gather)
    got, model, fn, transfers = _classifier_run("cuda", True, gather)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        np.testing.assert_allclose(_cpu(p), q.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert transfers[-1] == {"to_device": 0, "to_host": 1}  # loss.item() only
    assert fn.stats.graph_hits >= 1
    assert all(_no_host_round_trip(ex) for ex in fn.graphs.values())


def test_bool_mask_index_on_cuda_reads_only_the_mask():
    """x[mask] eagerly on CUDA: the mask's positions make one round trip (its shape depends on
    them), the gather and the gradient's scatter-add run on the device."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    mask = x % 3 == 1
    want_t = fusegrad.tensor(x, requires_grad=True)
    want = want_t[fusegrad.tensor(mask)]
    (want * want).sum().backward()
    t = fusegrad.tensor(x, device="cuda", requires_grad=True)
    m = fusegrad.tensor(mask, device="cuda")
    before = dict(device_array.TRANSFERS)
    got = t[m]
    assert device_array.TRANSFERS["to_host"] - before["to_host"] == 1
    (got * got).sum().backward()
    np.testing.assert_array_equal(_cpu(got), _cpu(want))
    np.testing.assert_array_equal(_cpu(t.grad), _cpu(want_t.grad))
    row = fusegrad.tensor([True, False, True], device="cuda")
    np.testing.assert_array_equal(_cpu(t[row, 1:]), x[[0, 2], 1:])
