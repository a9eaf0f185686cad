"""printing: repr/str of tensors in PyTorch's exact format (torch/_tensor_str.py's rules)."""

from __future__ import annotations

import math

import numpy as np

from .dtypes import bool_, float32, int64

PRECISION, THRESHOLD, EDGEITEMS, LINEWIDTH = 4, 1000, 3, 80


class _Formatter:
    def __init__(self, values: np.ndarray, floating: bool):
        self.floating = floating
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        flat = values.reshape(-1)
        if not floating:
            for v in flat.tolist():
                self.max_width = max(self.max_width, len(f"{v}"))
            return
        finite = flat[np.isfinite(flat) & (flat != 0)]
        if finite.size == 0:
            return
        absv = np.abs(finite).astype(np.float64)
        lo, hi = absv.min(), absv.max()
        vals = finite.tolist()
        self.int_mode = bool(np.all(finite == np.ceil(finite)))
        if self.int_mode:
            if hi / lo > 1000.0 or hi > 1.0e8:
                self.sci_mode = True
                fmt = f"{{:.{PRECISION}e}}"
                self.max_width = max(len(fmt.format(v)) for v in vals)
            else:
                self.max_width = max(len(f"{v:.0f}") + 1 for v in vals)
        else:
            if hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4:
                self.sci_mode = True
                fmt = f"{{:.{PRECISION}e}}"
            else:
                fmt = f"{{:.{PRECISION}f}}"
            self.max_width = max(len(fmt.format(v)) for v in vals)

    def format(self, value) -> str:
        if self.floating:
            if self.sci_mode:
                ret = f"{{:{self.max_width}.{PRECISION}e}}".format(value)
            elif self.int_mode:
                ret = f"{value:.0f}"
                if not (math.isinf(value) or math.isnan(value)):
                    ret += "."
            else:
                ret = f"{{:.{PRECISION}f}}".format(value)
        else:
            ret = f"{value}"
        return (self.max_width - len(ret)) * " " + ret


def _summarized(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a
    if a.shape[0] > 2 * EDGEITEMS:
        a = np.concatenate([a[:EDGEITEMS], a[-EDGEITEMS:]])
    return np.stack([_summarized(x) for x in a]) if a.ndim > 1 else a


def _vector(a: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    element_length = fmt.max_width + 2
    per_line = max(1, int(math.floor((LINEWIDTH - indent) / element_length)))
    if summarize and a.shape[0] > 2 * EDGEITEMS:
        data = [fmt.format(v) for v in a[:EDGEITEMS].tolist()] + [" ..."] + [
            fmt.format(v) for v in a[-EDGEITEMS:].tolist()
        ]
    else:
        data = [fmt.format(v) for v in a.tolist()]
    lines = [", ".join(data[i : i + per_line]) for i in range(0, len(data), per_line)]
    return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"


def _body(a: np.ndarray, indent: int, summarize: bool, fmt: _Formatter) -> str:
    if a.ndim == 0:
        return fmt.format(a.item())
    if a.ndim == 1:
        return _vector(a, indent, summarize, fmt)
    if summarize and a.shape[0] > 2 * EDGEITEMS:
        slices = (
            [_body(a[i], indent + 1, summarize, fmt) for i in range(EDGEITEMS)]
            + ["..."]
            + [_body(a[i], indent + 1, summarize, fmt) for i in range(len(a) - EDGEITEMS, len(a))]
        )
    else:
        slices = [_body(a[i], indent + 1, summarize, fmt) for i in range(a.shape[0])]
    return "[" + ("," + "\n" * (a.ndim - 1) + " " * (indent + 1)).join(slices) + "]"


def _add_suffixes(s: str, suffixes: list, indent: int) -> str:
    out = [s]
    last = len(s) - s.rfind("\n") + 1
    for suf in suffixes:
        if last + len(suf) + 2 > LINEWIDTH:
            out.append(",\n" + " " * indent + suf)
            last = indent + len(suf)
        else:
            out.append(", " + suf)
            last += len(suf) + 2
    out.append(")")
    return "".join(out)


def array_str(a: np.ndarray, dtype, indent: int) -> str:
    if a.size == 0:
        return "[]"
    summarize = a.size > THRESHOLD
    shown = _summarized(a) if summarize else a
    if dtype is bool_:
        fmt = _Formatter(np.array([str(v) for v in shown.reshape(-1).tolist()], dtype=object), False)
    else:
        fmt = _Formatter(shown, dtype.is_floating_point)
    return _body(a, indent, summarize, fmt)


def tensor_repr(t) -> str:
    from .tensor import _value

    prefix = "tensor("
    indent = len(prefix)
    a = _value(t)
    d = t.dtype
    suffixes = []
    if a.size == 0 and a.ndim != 1:
        suffixes.append(f"size={tuple(a.shape)}")
    if t.is_cuda:
        suffixes.append("device='cuda:0'")
    if d not in (float32, int64, bool_) or (a.size == 0 and d is not float32):
        suffixes.append(f"dtype={d!r}")  # an empty tensor has no values to show it is int
    if t.grad_fn is not None:
        suffixes.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        suffixes.append("requires_grad=True")
    return _add_suffixes(prefix + array_str(a, d, indent), suffixes, indent)
