"""``jax.jit`` training steps: value_and_grad of the loss plus the optimizer update, one jitted
function per workload (per DynamicNet depth: depth is a static argument, so each depth compiles
once, which is the JAX way to express a data-dependent architecture).

Parameters and optimizer state are donated to the jitted update so XLA may update them in place,
as PyTorch's optimizers do.  The optimizers restate PyTorch's formulas (momentum buffer starting
at the first gradient, middle layer untouched in a depth-0 step, Adam's bias correction with the
correction factors computed in float64 on the host, as PyTorch does) so the final losses match.

This module imports jax at import time; the contender imports it only when jax is installed.
"""

from __future__ import annotations

import math
import random
from functools import partial

import jax
import jax.numpy as jnp

from .workloads import Init


def _linear(p, name, x):
    return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]


def _sgd(params, bufs, grads, keys, lr, momentum):
    """PyTorch SGD on ``keys`` only (a parameter without grad is left alone)."""
    params, bufs = dict(params), dict(bufs)
    for k in keys:
        g = grads[k]
        if momentum:
            bufs[k] = momentum * bufs[k] + g
            g = bufs[k]
        params[k] = params[k] - lr * g
    return params, bufs


def _as_jax(arrays: dict) -> dict:
    return {k: jnp.asarray(v) for k, v in arrays.items()}


def dynamic_net(init: Init):
    hp = init.hyper
    outer = [f"{n}.{t}" for n in ("input_linear", "output_linear") for t in ("weight", "bias")]

    def loss_fn(p, x, y, depth):
        h = jnp.maximum(_linear(p, "input_linear", x), 0)
        for _ in range(depth):
            h = jnp.maximum(_linear(p, "middle_linear", h), 0)
        return jnp.sum((_linear(p, "output_linear", h) - y) ** 2)

    @partial(jax.jit, static_argnums=4, donate_argnums=(0, 1))
    def update(p, bufs, x, y, depth):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, depth)
        keys = list(p) if depth else outer
        p, bufs = _sgd(p, bufs, grads, keys, hp["lr"], hp["momentum"])
        return p, bufs, loss

    state = [_as_jax(init.params), {k: jnp.zeros_like(v) for k, v in init.params.items()}]

    def step(x, y):
        depth = random.randint(0, 3)
        state[0], state[1], loss = update(state[0], state[1], x, y, depth)
        return loss

    step.jitted = update
    return step


def small_mlp(init: Init):
    hp = init.hyper
    b1, b2 = hp["betas"]
    eps, lr = hp["eps"], hp["lr"]

    def loss_fn(p, x, y):
        h = jnp.tanh(_linear(p, "0", x))
        h = jnp.tanh(_linear(p, "2", h))
        return jnp.mean((_linear(p, "4", h) - y) ** 2)

    @partial(jax.jit, donate_argnums=(0, 1, 2))
    def update(p, m, v, x, y, step_size, bc2_sqrt):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        m = {k: m[k] + (1 - b1) * (g[k] - m[k]) for k in p}
        v = {k: b2 * v[k] + (1 - b2) * g[k] * g[k] for k in p}
        p = {k: p[k] - step_size * m[k] / (jnp.sqrt(v[k]) / bc2_sqrt + eps) for k in p}
        return p, m, v, loss

    def zeros():  # distinct buffers: donating one buffer twice is an error
        return {k: jnp.zeros_like(v) for k, v in init.params.items()}

    state = {"p": _as_jax(init.params), "m": zeros(), "v": zeros(), "t": 0}

    def step(x, y):
        state["t"] += 1
        t = state["t"]
        step_size = lr / (1 - b1**t)
        bc2_sqrt = math.sqrt(1 - b2**t)
        state["p"], state["m"], state["v"], loss = update(
            state["p"], state["m"], state["v"], x, y, step_size, bc2_sqrt
        )
        return loss

    step.jitted = update
    return step


def elementwise(init: Init):
    lr = init.hyper["lr"]

    def loss_fn(x):
        return jnp.mean((jnp.tanh(x * 1.5 + 0.3) * x - 0.2) ** 2)

    @partial(jax.jit, donate_argnums=0)
    def update(x):
        loss, g = jax.value_and_grad(loss_fn)(x)
        return x - lr * g, loss

    state = [jnp.asarray(init.params["x"])]

    def step():
        state[0], loss = update(state[0])
        return loss

    step.jitted = update
    return step


def layernorm_gelu(init: Init):
    hp = init.hyper
    lrs = {"x": hp["lr_x"], "gamma": hp["lr_affine"], "beta": hp["lr_affine"]}

    def loss_fn(p):
        x = p["x"]
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        xhat = (x - mu) * jax.lax.rsqrt(var + 1e-5)
        y = jax.nn.gelu(xhat * p["gamma"] + p["beta"], approximate=False)
        return jnp.mean(y * y)

    @partial(jax.jit, donate_argnums=0)
    def update(p):
        loss, g = jax.value_and_grad(loss_fn)(p)
        return {k: p[k] - lrs[k] * g[k] for k in p}, loss

    state = [_as_jax(init.params)]

    def step():
        state[0], loss = update(state[0])
        return loss

    step.jitted = update
    return step


def mnist_like_classifier(init: Init):
    hp = init.hyper

    def loss_fn(p, x, y):
        logits = _linear(p, "2", jnp.maximum(_linear(p, "0", x), 0))
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    @partial(jax.jit, donate_argnums=(0, 1))
    def update(p, bufs, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        p, bufs = _sgd(p, bufs, grads, list(p), hp["lr"], hp["momentum"])
        return p, bufs, loss

    state = [_as_jax(init.params), {k: jnp.zeros_like(v) for k, v in init.params.items()}]

    def step(x, y):
        state[0], state[1], loss = update(state[0], state[1], x, y)
        return loss

    step.jitted = update
    return step


BUILDERS = {
    "dynamic_net": dynamic_net,
    "small_mlp": small_mlp,
    "elementwise": elementwise,
    "layernorm_gelu": layernorm_gelu,
    "mnist_like_classifier": mnist_like_classifier,
}
