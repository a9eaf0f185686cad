"""The five benchmark workloads, each one full float32 training step.

Why this file looks the way it does:

* Each workload is written **once** against the PyTorch API, as a function of the module
  ``tl`` ("torch-like": either ``torch`` or ``fusegrad``).  Fusegrad eager, fusegrad compiled,
  PyTorch eager and ``torch.compile`` all run that same code, so a difference in speed or in
  the final loss is a difference between the libraries, not between two models.
* The hand-written numpy step and the JAX step necessarily spell the math out again; they
  live in ``numpy_steps.py`` and ``jax_steps.py`` and are registered here by name.
* Initial weights and data come from numpy with a fixed seed (``make_init``), and every
  contender loads the same arrays, so all contenders start identical and can be compared by
  their final loss after the same number of steps.
* Every workload states its cost model (bytes that must cross the memory bus, flops that must
  be executed) next to its definition: ``runner`` turns it into a lower-bound time with the
  machine limits measured in ``limits.py``.

DynamicNet draws its depth with ``random.randint(0, 3)`` inside ``forward`` (as the seed
program does); the numpy and JAX steps draw it at the same point of their step, and the
worker seeds ``random`` right before the first step, so all contenders see one depth sequence.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

F32 = np.float32
DYNAMIC_NET_SEED = 3  # random.seed for the depth draws: all four depths occur in steps 0-4


@dataclass(frozen=True)
class Schedule:
    """How many steps a worker runs: ``warmup`` untimed steps (the first one is timed
    separately as 'time to first step'), then ``repeats`` timed blocks of ``inner`` steps.
    Every contender runs exactly ``total`` steps, so final losses are comparable."""

    warmup: int
    repeats: int
    inner: int

    @property
    def total(self) -> int:
        return self.warmup + self.repeats * self.inner

    def measured(self) -> range:
        return range(self.warmup, self.total)


@dataclass
class Init:
    """Initial state shared by every contender: parameters keyed by their PyTorch name,
    input batches (step ``i`` uses ``batches[i % len(batches)]``), hyper-parameters."""

    params: dict[str, np.ndarray]
    batches: list[tuple[np.ndarray, ...]]
    hyper: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """Minimal work of one step: bytes that must move to/from memory and flops."""

    bytes: float
    flops: float
    model: str  # one line saying what was counted


@dataclass(frozen=True)
class Workload:
    """A benchmark workload: sizes, schedules, and one builder per implementation style."""

    name: str
    summary: str
    sizes: dict[str, int]
    quick_sizes: dict[str, int]
    schedule: Schedule
    quick_schedule: Schedule
    make_init: Callable[[dict[str, int]], Init]
    torch_like: Callable[..., tuple[Any, Callable]]  # (tl, init, device) -> (params, step)
    cost: Callable[[dict[str, int], Schedule], Cost]
    # Name of the builder in numpy_steps / jax_steps: ``build(init) -> step(*batch)``.
    impl: str = ""

    def config(self, quick: bool) -> tuple[dict[str, int], Schedule]:
        return (self.quick_sizes, self.quick_schedule) if quick else (self.sizes, self.schedule)


# ---------------------------------------------------------------------------------------------
# helpers shared by the workload definitions


def _linear_init(rng: np.random.Generator, fan_in: int, fan_out: int, prefix: str) -> dict:
    """PyTorch's default ``nn.Linear`` distribution, U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    drawn with numpy so that every contender loads the very same numbers."""
    bound = 1.0 / math.sqrt(fan_in)
    return {
        f"{prefix}.weight": rng.uniform(-bound, bound, (fan_out, fan_in)).astype(F32),
        f"{prefix}.bias": rng.uniform(-bound, bound, (fan_out,)).astype(F32),
    }


def load_params(tl: Any, model: Any, params: dict[str, np.ndarray], device: str) -> Any:
    """Copy the numpy initial weights into a torch-like module, by parameter name, and move
    the module to ``device`` (before any optimizer sees its parameters)."""
    named = dict(model.named_parameters())
    assert set(named) == set(params), (sorted(named), sorted(params))
    with tl.no_grad():
        for name, p in named.items():
            p.copy_(tl.from_numpy(params[name].copy()))
    return model.to(device) if device != "cpu" else model


def leaf(tl: Any, arr: np.ndarray, device: str) -> Any:
    """A leaf tensor on ``device`` that requires grad, holding a private copy of ``arr``."""
    t = tl.from_numpy(arr.copy())
    return (t.to(device) if device != "cpu" else t).requires_grad_()


def depth_sequence(n: int) -> list[int]:
    """The DynamicNet depths drawn in steps 0..n-1 (the same draws the models make)."""
    state = random.getstate()
    random.seed(DYNAMIC_NET_SEED)
    seq = [random.randint(0, 3) for _ in range(n)]
    random.setstate(state)
    return seq


def _supervised_step(model, criterion, optimizer):
    """The PyTorch training step the dynamic_net, small_mlp and mnist workloads measure (in
    any library with PyTorch's API)."""

    def step(x, y):
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return step


def _linear_flops(n: int, fan_in: int, fan_out: int, input_grad: bool = True) -> float:
    """Forward matmul + weight grad (+ input grad): 2*n*in*out flops each."""
    return 2.0 * n * fan_in * fan_out * (3 if input_grad else 2)


# ---------------------------------------------------------------------------------------------
# 1. dynamic_net: the seed program (001), N=64, D_in=1000, H=100, D_out=10


def _dynamic_net_init(s: dict[str, int]) -> Init:
    rng = np.random.default_rng(1)
    params = {}
    params.update(_linear_init(rng, s["D_in"], s["H"], "input_linear"))
    params.update(_linear_init(rng, s["H"], s["H"], "middle_linear"))
    params.update(_linear_init(rng, s["H"], s["D_out"], "output_linear"))
    x = rng.standard_normal((s["N"], s["D_in"])).astype(F32)
    y = rng.standard_normal((s["N"], s["D_out"])).astype(F32)
    return Init(params, [(x, y)], {"lr": 1e-4, "momentum": 0.9}, dict(s))


def _dynamic_net_torch(tl: Any, init: Init, device: str = "cpu"):
    s, hp = init.sizes, init.hyper

    class DynamicNet(tl.nn.Module):
        def __init__(self, D_in, H, D_out):
            super().__init__()
            self.input_linear = tl.nn.Linear(D_in, H)
            self.middle_linear = tl.nn.Linear(H, H)
            self.output_linear = tl.nn.Linear(H, D_out)

        def forward(self, x):
            h_relu = self.input_linear(x).clamp(min=0)
            for _ in range(random.randint(0, 3)):
                h_relu = self.middle_linear(h_relu).clamp(min=0)
            return self.output_linear(h_relu)

    model = DynamicNet(s["D_in"], s["H"], s["D_out"])
    model = load_params(tl, model, init.params, device)
    criterion = tl.nn.MSELoss(reduction="sum")
    optimizer = tl.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"])
    return model, _supervised_step(model, criterion, optimizer)


def _dynamic_net_cost(s: dict[str, int], sched: Schedule) -> Cost:
    # Flops: input layer forward + weight grad (its input x needs no grad), the middle layer
    # (forward, weight grad, input grad) times the mean depth of the measured steps, the
    # output layer likewise.  Bytes: x once, and per parameter one read + one write of the
    # weight and of its momentum buffer (the gradient can live in registers if fused);
    # activations (N x H floats) stay in cache.
    N, D, H, O = s["N"], s["D_in"], s["H"], s["D_out"]
    seq = depth_sequence(sched.total)[sched.warmup :]
    depth = sum(seq) / max(1, len(seq))
    flops = _linear_flops(N, D, H, False) + depth * _linear_flops(N, H, H) + _linear_flops(N, H, O)
    n_params = D * H + H + H * H + H + H * O + O
    return Cost(
        4.0 * (N * D + N * O + 4 * n_params),
        flops,
        f"x,y read once; params+momentum read+written once; mean depth {depth:.2f}",
    )


# ---------------------------------------------------------------------------------------------
# 2. small_mlp: overhead-bound, 32 -> 64 -> 64 -> 1 with tanh, batch 16, MSE, Adam


def _small_mlp_init(s: dict[str, int]) -> Init:
    rng = np.random.default_rng(2)
    dims = [s["D_in"], s["H"], s["H"], 1]
    params = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        params.update(_linear_init(rng, a, b, str(2 * i)))  # Sequential names: 0, 2, 4
    batches = []
    for _ in range(32):  # 512 noisy samples: the loss plateaus instead of reaching 0
        x = rng.standard_normal((s["B"], s["D_in"])).astype(F32)
        y = np.sin(x.sum(axis=1, keepdims=True) / 4) + 0.3 * rng.standard_normal((s["B"], 1))
        batches.append((x, y.astype(F32)))
    return Init(params, batches, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}, dict(s))


def _small_mlp_torch(tl: Any, init: Init, device: str = "cpu"):
    s, hp = init.sizes, init.hyper
    nn = tl.nn
    model = nn.Sequential(
        nn.Linear(s["D_in"], s["H"]),
        nn.Tanh(),
        nn.Linear(s["H"], s["H"]),
        nn.Tanh(),
        nn.Linear(s["H"], 1),
    )
    model = load_params(tl, model, init.params, device)
    criterion = nn.MSELoss()
    optimizer = tl.optim.Adam(model.parameters(), lr=hp["lr"], betas=hp["betas"], eps=hp["eps"])
    return model, _supervised_step(model, criterion, optimizer)


def _small_mlp_cost(s: dict[str, int], sched: Schedule) -> Cost:
    # Adam: per parameter read p, m, v and write p, m, v once; ~12 flops per parameter.
    B, D, H = s["B"], s["D_in"], s["H"]
    n_params = D * H + H + H * H + H + H + 1
    flops = _linear_flops(B, D, H, False) + _linear_flops(B, H, H) + _linear_flops(B, H, 1)
    return Cost(
        4.0 * (B * (D + 1) + 6 * n_params),
        flops + 12.0 * n_params,
        "batch read once; params + Adam m, v read+written once",
    )


# ---------------------------------------------------------------------------------------------
# 3. elementwise: memory-bound, loss ((tanh(x*1.5+0.3)*x - 0.2)**2).mean(), SGD on x


def _elementwise_init(s: dict[str, int]) -> Init:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(s["n"]).astype(F32)
    # The gradient of a mean is O(1/n) per element: scale lr by n so that x really moves and
    # the final-loss check also checks backward and update, not just the forward.
    return Init({"x": x}, [()], {"lr": 0.002 * s["n"]}, dict(s))


def _elementwise_torch(tl: Any, init: Init, device: str = "cpu"):
    x = leaf(tl, init.params["x"], device)
    optimizer = tl.optim.SGD([x], lr=init.hyper["lr"])

    def step():
        loss = ((tl.tanh(x * 1.5 + 0.3) * x - 0.2) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return {"x": x}, step


def _elementwise_cost(s: dict[str, int], sched: Schedule) -> Cost:
    # One fused pass suffices: read x, write x.grad (observable after the step), write x.
    # ~30 flops per element (tanh as a rational polynomial ~20, the rest ~10).
    n = s["n"]
    return Cost(4.0 * 3 * n, 30.0 * n, "read x, write x.grad, write x: one pass")


# ---------------------------------------------------------------------------------------------
# 4. layernorm_gelu: gelu(layer_norm(x) * gamma + beta), loss y.square().mean(), SGD


def _layernorm_gelu_init(s: dict[str, int]) -> Init:
    rng = np.random.default_rng(4)
    R, C = s["R"], s["C"]
    x = rng.standard_normal((R, C)).astype(F32)
    gamma = (1.0 + 0.1 * rng.standard_normal(C)).astype(F32)
    beta = (0.1 * rng.standard_normal(C)).astype(F32)
    # Two SGD instances: gamma/beta gradients are O(1/C), x's are O(1/(R*C)); one lr would
    # leave x (and so x's backward) invisible in the final loss.
    return Init(
        {"x": x, "gamma": gamma, "beta": beta},
        [()],
        {"lr_affine": 0.01 * C, "lr_x": 0.01 * R * C},
        dict(s),
    )


def _layernorm_gelu_torch(tl: Any, init: Init, device: str = "cpu"):
    F = tl.nn.functional
    C = init.sizes["C"]
    x, gamma, beta = (leaf(tl, init.params[k], device) for k in ("x", "gamma", "beta"))
    opt_affine = tl.optim.SGD([gamma, beta], lr=init.hyper["lr_affine"])
    opt_x = tl.optim.SGD([x], lr=init.hyper["lr_x"])

    def step():
        y = F.gelu(F.layer_norm(x, (C,)) * gamma + beta)
        loss = y.square().mean()
        opt_affine.zero_grad()
        opt_x.zero_grad()
        loss.backward()
        opt_affine.step()
        opt_x.step()
        return loss

    return {"x": x, "gamma": gamma, "beta": beta}, step


def _layernorm_gelu_cost(s: dict[str, int], sched: Schedule) -> Cost:
    # A row (C floats) fits in L1, so forward (mean, var, normalize, affine, gelu, square-sum)
    # and backward (row reductions for dx, column sums for dgamma/dbeta) can be done in one
    # pass over x: read x, write x.grad, write x.  ~60 flops per element (erf ~20 forward,
    # gelu' with exp ~25, layer norm forward+backward ~15).
    n = s["R"] * s["C"]
    return Cost(4.0 * 3 * n, 60.0 * n, "read x, write x.grad, write x: one pass (rows in L1)")


# ---------------------------------------------------------------------------------------------
# 5. mnist_like_classifier: 784-256-10, ReLU, CrossEntropyLoss, batch 128, SGD momentum 0.9


def _mnist_init(s: dict[str, int]) -> Init:
    rng = np.random.default_rng(5)
    params = {}
    params.update(_linear_init(rng, s["D_in"], s["H"], "0"))
    params.update(_linear_init(rng, s["H"], s["classes"], "2"))
    batches = []
    for _ in range(4):
        x = rng.uniform(0.0, 1.0, (s["B"], s["D_in"])).astype(F32)
        y = rng.integers(0, s["classes"], s["B"]).astype(np.int64)
        batches.append((x, y))
    return Init(params, batches, {"lr": 0.01, "momentum": 0.9}, dict(s))


def _mnist_torch(tl: Any, init: Init, device: str = "cpu"):
    s, hp = init.sizes, init.hyper
    nn = tl.nn
    model = nn.Sequential(nn.Linear(s["D_in"], s["H"]), nn.ReLU(), nn.Linear(s["H"], s["classes"]))
    model = load_params(tl, model, init.params, device)
    criterion = nn.CrossEntropyLoss()
    optimizer = tl.optim.SGD(model.parameters(), lr=hp["lr"], momentum=hp["momentum"])
    return model, _supervised_step(model, criterion, optimizer)


def _mnist_cost(s: dict[str, int], sched: Schedule) -> Cost:
    B, D, H, K = s["B"], s["D_in"], s["H"], s["classes"]
    n_params = D * H + H + H * K + K
    flops = _linear_flops(B, D, H, False) + _linear_flops(B, H, K)
    return Cost(
        4.0 * (B * D + 4 * n_params) + 8.0 * B,
        flops,
        "batch read once; params+momentum read+written once",
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload(
            "dynamic_net",
            "seed DynamicNet 1000-100(x0..3)-10, N=64, MSE(sum), SGD momentum",
            {"N": 64, "D_in": 1000, "H": 100, "D_out": 10},
            {"N": 64, "D_in": 1000, "H": 100, "D_out": 10},
            Schedule(warmup=20, repeats=15, inner=20),
            Schedule(warmup=8, repeats=3, inner=10),
            _dynamic_net_init,
            _dynamic_net_torch,
            _dynamic_net_cost,
            "dynamic_net",
        ),
        Workload(
            "small_mlp",
            "MLP 32-64-64-1 tanh, batch 16, MSE, Adam (overhead-bound)",
            {"B": 16, "D_in": 32, "H": 64},
            {"B": 16, "D_in": 32, "H": 64},
            Schedule(warmup=50, repeats=15, inner=100),
            Schedule(warmup=10, repeats=3, inner=30),
            _small_mlp_init,
            _small_mlp_torch,
            _small_mlp_cost,
            "small_mlp",
        ),
        Workload(
            "elementwise",
            "1M-element tanh loss, SGD on x (memory-bound)",
            {"n": 1_000_000},
            {"n": 1_000_000},
            Schedule(warmup=5, repeats=10, inner=10),
            Schedule(warmup=2, repeats=3, inner=3),
            _elementwise_init,
            _elementwise_torch,
            _elementwise_cost,
            "elementwise",
        ),
        Workload(
            "layernorm_gelu",
            "gelu(layer_norm(x)*gamma+beta), x 4096x1024, SGD on x,gamma,beta",
            {"R": 4096, "C": 1024},
            {"R": 512, "C": 1024},
            Schedule(warmup=3, repeats=7, inner=3),
            Schedule(warmup=2, repeats=3, inner=2),
            _layernorm_gelu_init,
            _layernorm_gelu_torch,
            _layernorm_gelu_cost,
            "layernorm_gelu",
        ),
        Workload(
            "mnist_like_classifier",
            "MLP 784-256-10 ReLU, CrossEntropy, batch 128, SGD momentum",
            {"B": 128, "D_in": 784, "H": 256, "classes": 10},
            {"B": 128, "D_in": 784, "H": 256, "classes": 10},
            Schedule(warmup=10, repeats=10, inner=20),
            Schedule(warmup=4, repeats=3, inner=5),
            _mnist_init,
            _mnist_torch,
            _mnist_cost,
            "mnist_like_classifier",
        ),
    ]
}
