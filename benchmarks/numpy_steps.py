"""Hand-written numpy training steps: the "no framework" contender.

Each builder takes the workload's ``Init`` and returns ``step(*batch) -> loss`` that does the
forward pass, the backward pass and the optimizer update explicitly in numpy.  They are written
for speed, the way a careful person would write them by hand:

* all intermediate buffers are allocated once and reused (``out=`` everywhere), because glibc
  returns large freed blocks to the OS and re-faulting them costs more than the math;
* scalars are folded (``2/n * lr``) so each array is touched as few times as possible;
* parameters, gradients and optimizer state live in one flat float32 array each (the
  per-parameter arrays are views into it), so an optimizer update is a handful of numpy calls
  instead of a handful per parameter;
* buffers that the step updates with ``+=`` are bound as default arguments of ``step``: a
  closure variable cannot be the target of ``+=``, and locals are the fastest lookup anyway.

They follow PyTorch's semantics exactly where it matters for the final-loss check: SGD's
momentum buffer starts as the first gradient, a parameter whose ``.grad`` is None (DynamicNet's
middle layer in a depth-0 step) is skipped by the optimizer, Adam uses PyTorch's bias
correction, GELU is the exact erf form, layer norm uses eps=1e-5 and the biased variance.
"""

from __future__ import annotations

import math
import random

import numpy as np

from .workloads import F32, Init

try:  # scipy's erf is one vectorised pass; numpy has no erf of its own
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover - exercised only without scipy

    def _erf(v: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7, below float32 resolution near 1)."""
        a = np.abs(v)
        t = 1.0 / (1.0 + 0.3275911 * a)
        poly = (
            (((1.061405429 * t - 1.453152027) * t + 1.421413741) * t - 0.284496736) * t
            + 0.254829592
        ) * t
        np.multiply(np.sign(v), 1.0 - poly * np.exp(-a * a), out=out)
        return out


class FlatParams:
    """Parameters and gradients as views into two flat float32 arrays."""

    def __init__(self, arrays: list[np.ndarray]):
        total = sum(a.size for a in arrays)
        self.data = np.empty(total, F32)
        self.grad = np.zeros(total, F32)
        self.views, self.grads, self.ends = [], [], []
        offset = 0
        for a in arrays:
            view = self.data[offset : offset + a.size].reshape(a.shape)
            view[...] = a
            self.views.append(view)
            self.grads.append(self.grad[offset : offset + a.size].reshape(a.shape))
            offset += a.size
            self.ends.append(offset)


class SGD:
    """PyTorch's SGD (dampening 0, no nesterov) on the first ``n`` entries of a FlatParams."""

    def __init__(self, fp: FlatParams, lr: float, momentum: float = 0.0):
        self.fp, self.lr, self.momentum = fp, lr, momentum
        self.buf = np.zeros_like(fp.data)  # 0.9 * 0 + g == PyTorch's "buf = g" on step 1
        self.tmp = np.empty_like(fp.data)

    def step(self, n: int | None = None) -> None:
        n = self.fp.data.size if n is None else n
        p, g, buf, tmp = self.fp.data[:n], self.fp.grad[:n], self.buf[:n], self.tmp[:n]
        if self.momentum:
            buf *= self.momentum
            buf += g
            g = buf
        np.multiply(g, self.lr, out=tmp)
        p -= tmp


class Adam:
    """PyTorch's Adam (single-tensor form: lerp for m, addcmul for v, bias-corrected)."""

    def __init__(self, fp: FlatParams, lr: float, betas: tuple[float, float], eps: float):
        self.fp, self.lr, self.betas, self.eps = fp, lr, betas, eps
        self.m = np.zeros_like(fp.data)
        self.v = np.zeros_like(fp.data)
        self.tmp = np.empty_like(fp.data)
        self.t = 0

    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        p, g, m, v, tmp = self.fp.data, self.fp.grad, self.m, self.v, self.tmp
        np.subtract(g, m, out=tmp)
        tmp *= 1.0 - b1
        m += tmp
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v += tmp
        step_size = self.lr / (1.0 - b1**self.t)
        np.sqrt(v, out=tmp)
        tmp /= math.sqrt(1.0 - b2**self.t)
        tmp += self.eps
        np.divide(m, tmp, out=tmp)
        tmp *= step_size
        p -= tmp


def dynamic_net(init: Init):
    s, hp, P = init.sizes, init.hyper, init.params
    # The middle layer goes last so that a depth-0 step (no middle grad) updates a prefix.
    order = ["input_linear", "output_linear", "middle_linear"]
    fp = FlatParams([P[f"{k}.{t}"] for k in order for t in ("weight", "bias")])
    W1, b1, W3, b3, W2, b2 = fp.views
    gW1, gb1, gW3, gb3, gW2, gb2 = fp.grads
    n_outer = fp.ends[3]
    opt = SGD(fp, hp["lr"], hp["momentum"])
    N, H, O = s["N"], s["H"], s["D_out"]
    h = [np.empty((N, H), F32) for _ in range(4)]  # h[i]: activation after i middle layers
    out = np.empty((N, O), F32)
    dh, dh_next = np.empty((N, H), F32), np.empty((N, H), F32)
    tW2, tb2 = np.empty_like(W2), np.empty_like(b2)

    def step(x, y, out=out, gW2=gW2, gb2=gb2):
        depth = random.randint(0, 3)
        np.matmul(x, W1.T, out=h[0])
        h[0] += b1
        np.maximum(h[0], 0, out=h[0])
        for i in range(depth):
            np.matmul(h[i], W2.T, out=h[i + 1])
            h[i + 1] += b2
            np.maximum(h[i + 1], 0, out=h[i + 1])
        last = h[depth]
        np.matmul(last, W3.T, out=out)
        out += b3
        out -= y  # residual
        r = out.ravel()
        loss = np.dot(r, r)
        out *= 2.0  # d loss / d y_pred
        np.matmul(out.T, last, out=gW3)
        out.sum(axis=0, out=gb3)
        g, g_next = np.matmul(out, W3, out=dh), dh_next
        for i in reversed(range(depth)):
            g *= h[i + 1] > 0
            if i == depth - 1:
                np.matmul(g.T, h[i], out=gW2)
                g.sum(axis=0, out=gb2)
            else:
                gW2 += np.matmul(g.T, h[i], out=tW2)
                gb2 += g.sum(axis=0, out=tb2)
            np.matmul(g, W2, out=g_next)
            g, g_next = g_next, g
        g *= h[0] > 0
        np.matmul(g.T, x, out=gW1)
        g.sum(axis=0, out=gb1)
        opt.step(None if depth else n_outer)
        return loss

    return step


def small_mlp(init: Init):
    s, hp, P = init.sizes, init.hyper, init.params
    fp = FlatParams([P[f"{i}.{t}"] for i in (0, 2, 4) for t in ("weight", "bias")])
    W1, b1, W2, b2, W3, b3 = fp.views
    gW1, gb1, gW2, gb2, gW3, gb3 = fp.grads
    opt = Adam(fp, hp["lr"], hp["betas"], hp["eps"])
    B, H = s["B"], s["H"]
    h1, h2, d1, d2, t = (np.empty((B, H), F32) for _ in range(5))
    out = np.empty((B, 1), F32)

    def tanh_backward(d, hidden):  # d *= 1 - hidden**2
        np.multiply(hidden, hidden, out=t)
        np.subtract(1.0, t, out=t)
        d *= t

    def step(x, y, h1=h1, h2=h2, out=out):
        np.matmul(x, W1.T, out=h1)
        h1 += b1
        np.tanh(h1, out=h1)
        np.matmul(h1, W2.T, out=h2)
        h2 += b2
        np.tanh(h2, out=h2)
        np.matmul(h2, W3.T, out=out)
        out += b3
        out -= y
        r = out.ravel()
        loss = np.dot(r, r) / r.size
        out *= 2.0 / r.size
        np.matmul(out.T, h2, out=gW3)
        out.sum(axis=0, out=gb3)
        np.matmul(out, W3, out=d2)
        tanh_backward(d2, h2)
        np.matmul(d2.T, h1, out=gW2)
        d2.sum(axis=0, out=gb2)
        np.matmul(d2, W2, out=d1)
        tanh_backward(d1, h1)
        np.matmul(d1.T, x, out=gW1)
        d1.sum(axis=0, out=gb1)
        opt.step()
        return loss

    return step


def elementwise(init: Init):
    x = init.params["x"].copy()
    n, lr = x.size, init.hyper["lr"]
    t, u, g = np.empty_like(x), np.empty_like(x), np.empty_like(x)

    def step(x=x, t=t, u=u, g=g):
        np.multiply(x, 1.5, out=t)
        t += 0.3
        np.tanh(t, out=t)  # t = tanh(1.5x + 0.3)
        np.multiply(t, x, out=u)
        u -= 0.2  # u = t*x - 0.2, loss = mean(u^2)
        loss = np.dot(u, u) / n
        # dloss/dx = 2u/n * (t + 1.5 x (1 - t^2)); lr folded into the constant
        np.multiply(t, t, out=g)
        np.subtract(1.0, g, out=g)
        g *= x
        g *= 1.5
        g += t
        g *= u
        g *= 2.0 * lr / n
        x -= g
        return loss

    return step


def layernorm_gelu(init: Init):
    P, hp = init.params, init.hyper
    x, gamma, beta = P["x"].copy(), P["gamma"].copy(), P["beta"].copy()
    R, C = x.shape
    n, eps = x.size, 1e-5
    lr_a, lr_x = hp["lr_affine"], hp["lr_x"]
    xhat, z, cdf, y, d = (np.empty_like(x) for _ in range(5))
    mu, rstd = np.empty((R, 1), F32), np.empty((R, 1), F32)
    inv_sqrt2, inv_sqrt2pi = 1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)

    def step(x=x, gamma=gamma, beta=beta, xhat=xhat, z=z, cdf=cdf, d=d):
        np.mean(x, axis=1, keepdims=True, out=mu)
        np.subtract(x, mu, out=xhat)
        var = np.einsum("ij,ij->i", xhat, xhat) / C
        np.divide(1.0, np.sqrt(var + eps), out=rstd[:, 0])
        xhat *= rstd
        np.multiply(xhat, gamma, out=z)
        z += beta
        np.multiply(z, inv_sqrt2, out=cdf)
        _erf(cdf, out=cdf)
        cdf += 1.0
        cdf *= 0.5  # Phi(z)
        np.multiply(z, cdf, out=y)  # gelu(z)
        loss = np.dot(y.ravel(), y.ravel()) / n
        # dz = 2y/n * (Phi(z) + z phi(z))
        np.multiply(z, z, out=d)
        d *= -0.5
        np.exp(d, out=d)
        d *= z
        d *= inv_sqrt2pi
        d += cdf
        d *= y
        d *= 2.0 / n
        dgamma = np.einsum("ij,ij->j", d, xhat)
        dbeta = d.sum(axis=0)
        d *= gamma  # dxhat
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), per row
        a = d.mean(axis=1, keepdims=True)
        b = (np.einsum("ij,ij->i", d, xhat) / C)[:, None]
        xhat *= b
        d -= a
        d -= xhat
        d *= rstd
        d *= lr_x
        x -= d
        gamma -= lr_a * dgamma
        beta -= lr_a * dbeta
        return loss

    return step


def mnist_like_classifier(init: Init):
    s, hp, P = init.sizes, init.hyper, init.params
    fp = FlatParams([P[f"{i}.{t}"] for i in (0, 2) for t in ("weight", "bias")])
    W1, b1, W2, b2 = fp.views
    gW1, gb1, gW2, gb2 = fp.grads
    opt = SGD(fp, hp["lr"], hp["momentum"])
    B, H, K = s["B"], s["H"], s["classes"]
    h, dh = np.empty((B, H), F32), np.empty((B, H), F32)
    logits, e = np.empty((B, K), F32), np.empty((B, K), F32)
    rows = np.arange(B)

    def step(x, y, h=h, dh=dh, logits=logits, e=e):
        np.matmul(x, W1.T, out=h)
        h += b1
        np.maximum(h, 0, out=h)
        np.matmul(h, W2.T, out=logits)
        logits += b2
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=e)
        total = e.sum(axis=1, keepdims=True)
        loss = np.log(total).mean() - logits[rows, y].mean()
        e /= total  # softmax
        e[rows, y] -= 1.0
        e *= 1.0 / B  # d loss / d logits
        np.matmul(e.T, h, out=gW2)
        e.sum(axis=0, out=gb2)
        np.matmul(e, W2, out=dh)
        dh *= h > 0
        np.matmul(dh.T, x, out=gW1)
        dh.sum(axis=0, out=gb1)
        opt.step()
        return loss

    return step


BUILDERS = {
    "dynamic_net": dynamic_net,
    "small_mlp": small_mlp,
    "elementwise": elementwise,
    "layernorm_gelu": layernorm_gelu,
    "mnist_like_classifier": mnist_like_classifier,
}
