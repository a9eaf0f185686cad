"""Hand-written numpy training steps: the "no framework" contender.

Each builder takes the workload's ``Init`` and returns ``step(*batch) -> loss`` that does the
forward pass, the backward pass and the optimizer update explicitly in numpy.  They are written
for speed, the way a careful person would write them by hand:

* all intermediate buffers are allocated once and reused (``out=`` everywhere), because glibc
  returns large freed blocks to the OS and re-faulting them costs more than the math;
* the memory-bound steps (elementwise, layernorm_gelu) run over cache-sized blocks, so each
  element of x crosses the memory bus once per step instead of once per numpy call;
* scalars are folded (``2/n * lr``) so each array is touched as few times as possible;
* parameters, gradients and optimizer state live in one flat float32 array each (the
  per-parameter arrays are views into it), so an optimizer update is a handful of numpy calls
  instead of a handful per parameter;
* buffers that the step updates with ``+=`` are bound as default arguments of ``step``: a
  closure variable cannot be the target of ``+=``, and locals are the fastest lookup anyway.

They follow PyTorch's semantics exactly where it matters for the final-loss check: SGD's
momentum buffer starts as the first gradient, a parameter whose ``.grad`` is None (DynamicNet's
middle layer in a depth-0 step) is skipped by the optimizer, Adam uses PyTorch's bias
correction, GELU is the exact erf form (erf to within 1.5e-7), layer norm uses eps=1e-5 and the
biased variance.
"""

from __future__ import annotations

import math
import random

import numpy as np

from .workloads import F32, Init


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


def elementwise(init: Init, chunk: int = 65536):
    """Runs over chunks of ``chunk`` elements so the temporaries stay in cache (20-30% faster
    here than whole-array passes); x is read and written once per step."""
    x = init.params["x"].copy()
    n, lr = x.size, init.hyper["lr"]
    t, u, g = (np.empty(min(chunk, n), F32) for _ in range(3))

    def part(xb, t, u, g):
        np.multiply(xb, 1.5, out=t)
        t += 0.3
        np.tanh(t, out=t)  # t = tanh(1.5x + 0.3)
        np.multiply(t, xb, out=u)
        u -= 0.2  # u = t*x - 0.2, loss = mean(u^2)
        loss = np.dot(u, u)
        # dloss/dx = 2u/n * (t + 1.5 x (1 - t^2)); lr folded into the constant
        np.multiply(t, t, out=g)
        np.subtract(1.0, g, out=g)
        g *= xb
        g *= 1.5
        g += t
        g *= u
        g *= 2.0 * lr / n
        xb -= g
        return loss

    def step():
        loss = 0.0
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            loss += part(x[s : s + m], t[:m], u[:m], g[:m])
        return np.float32(loss / n)

    return step


# Abramowitz & Stegun 7.1.26: erf(a) = 1 - t*(a1 + t*(a2 + ... + t*a5)) * exp(-a^2),
# t = 1 / (1 + p*a), for a >= 0; absolute error below 1.5e-7 (float32 resolution near 1).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def layernorm_gelu(init: Init, block_rows: int = 64):
    """Layer norm and GELU are row-wise, so the step runs over blocks of ``block_rows`` rows:
    every intermediate of a block stays in cache, and x is read once and written once per
    step (the one-pass structure of the cost model). GELU's normal CDF uses A&S 7.1.26,
    whose exp(-z^2/2) is the very exp that GELU's derivative needs (scipy's float32 erf is a
    scalar loop: it alone took 60 ms of a 110 ms step)."""
    P, hp = init.params, init.hyper
    x, gamma, beta = P["x"].copy(), P["gamma"].copy(), P["beta"].copy()
    R, C = x.shape
    n, eps = x.size, 1e-5
    lr_a, lr_x = hp["lr_affine"], hp["lr_x"]
    B = min(block_rows, R)
    xhat, z, e, t, cdf, d = (np.empty((B, C), F32) for _ in range(6))
    dgamma, dbeta, colsum = np.empty(C, F32), np.empty(C, F32), np.empty(C, F32)
    inv_sqrt2pi = 1.0 / math.sqrt(2.0 * math.pi)
    t_scale = _AS_P / math.sqrt(2.0)
    a1, a2, a3, a4, a5 = _AS_A

    def block(xb, xhat, z, e, t, cdf, d):
        """Forward, backward and the x update for rows ``xb``; returns the block's loss sum
        and accumulates into dgamma and dbeta."""
        mu = xb.mean(axis=1, keepdims=True)
        np.subtract(xb, mu, out=xhat)
        rstd = 1.0 / np.sqrt(np.einsum("ij,ij->i", xhat, xhat) / C + eps)[:, None]
        xhat *= rstd
        np.multiply(xhat, gamma, out=z)
        z += beta
        np.multiply(z, z, out=e)
        e *= -0.5
        np.exp(e, out=e)  # exp(-z^2/2)
        np.abs(z, out=t)
        t *= t_scale
        t += 1.0
        np.reciprocal(t, out=t)
        np.multiply(t, a5, out=cdf)  # Horner, then h = 0.5 * poly * exp = min(Phi, 1 - Phi)
        for a in (a4, a3, a2, a1):
            cdf += a
            cdf *= t
        cdf *= e
        np.subtract(0.5, np.multiply(cdf, 0.5, out=cdf), out=cdf)
        np.copysign(cdf, z, out=cdf)
        cdf += 0.5  # Phi(z)
        np.multiply(z, cdf, out=t)  # y = gelu(z)
        loss = np.dot(t.ravel(), t.ravel())
        # dz = 2y/n * (Phi(z) + z phi(z))
        e *= z
        e *= inv_sqrt2pi
        e += cdf
        np.multiply(e, t, out=d)
        d *= 2.0 / n
        np.add(dgamma, np.einsum("ij,ij->j", d, xhat, out=colsum), out=dgamma)
        np.add(dbeta, d.sum(axis=0, out=colsum), out=dbeta)
        d *= gamma  # dxhat
        # dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), per row
        mean_d = d.mean(axis=1, keepdims=True)
        mean_dx = np.einsum("ij,ij->i", d, xhat)[:, None] / C
        xhat *= mean_dx
        d -= mean_d
        d -= xhat
        d *= rstd * lr_x
        xb -= d
        return loss

    def step(gamma=gamma, beta=beta):
        dgamma[:] = 0.0
        dbeta[:] = 0.0
        loss = 0.0
        for r in range(0, R, B):
            rows = min(B, R - r)
            loss += block(x[r : r + rows], *(buf[:rows] for buf in (xhat, z, e, t, cdf, d)))
        gamma -= lr_a * dgamma  # after all rows: their backward used the old gamma, beta
        beta -= lr_a * dbeta
        return np.float32(loss / n)

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
