"""errors: fusegrad's error classes and the user's source line they point at."""

from __future__ import annotations

import os
import sys

_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


class FusegradError(RuntimeError):
    """Base of fusegrad's own errors; a RuntimeError, as PyTorch raises for the same mistakes."""


class CompileError(FusegradError):
    """Numba could not compile a generated kernel; names the kernel, its ops and shapes."""


class VerifyError(FusegradError):
    """verify=True found a compiled value that differs from eager mode."""


class RecompileWarning(UserWarning):
    """The graph cache of a compiled function is full and starts evicting plans."""


def user_frame(depth: int = 1):
    """The innermost stack frame outside the fusegrad package (None if there is none)."""
    f = sys._getframe(depth)
    while f is not None and f.f_code.co_filename.startswith(_PKG_DIR):
        f = f.f_back
    return f


def user_line() -> str:
    """'file.py:12' of the user's code that called into fusegrad, for error messages."""
    f = user_frame(2)
    if f is None:
        return "<unknown>"
    return f"{os.path.basename(f.f_code.co_filename)}:{f.f_lineno}"


def user_site() -> tuple[str, int]:
    """(filename, line) of the user's call site; cheap enough to record per traced op."""
    f = user_frame(2)
    return ("<unknown>", 0) if f is None else (f.f_code.co_filename, f.f_lineno)


def op_error(op: str, detail: str, cls: type = RuntimeError) -> Exception:
    """An error naming the op, the detail (shapes/dtypes) and the user's source line."""
    return cls(f"{op}: {detail} (at {user_line()})")
