"""cache: generated kernel source on disk, imported as real modules so Numba's cache=True works.

The folder (FUSEGRAD_CACHE_DIR, default ~/.cache/fusegrad) holds Python that fusegrad imports
and machine code that Numba loads, so whoever can write it can run code in this process. It is
created with mode 0700, a folder that others can write is refused, and each file is named by
the sha256 of its code and checked against that hash before it is imported; a truncated or
garbage file is rewritten (atomically), never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import stat
import sys
import tempfile

from .errors import FusegradError

MARKER = "# ---- kernel code (the file name is the sha256 of what follows) ----\n"
def _lib_version() -> str:
    """Hash of the scalar libraries kernels inline: Numba's cache does not track them."""
    here = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for f in ("fastmath.py", "kernellib.py"):
        with open(os.path.join(here, f), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


PRELUDE = (
    f"# fusegrad kernel library {_lib_version()}\n"
    "import math\nimport numpy as np\nfrom numba import njit, prange\n"
    "from fusegrad.kernellib import *  # noqa: F401,F403\n\n"
)


def cache_dir() -> str:
    d = os.environ.get("FUSEGRAD_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(base, "fusegrad")
    return os.path.abspath(d)


def _checked_dir() -> str:
    d = cache_dir()
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.stat(d)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise FusegradError(
            f"fusegrad refuses the kernel cache folder {d}: it is writable by other users "
            f"(mode {oct(st.st_mode & 0o777)}), and fusegrad imports code from it. "
            f"Run `chmod 700 {d}` or point FUSEGRAD_CACHE_DIR at a private folder."
        )
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise FusegradError(
            f"fusegrad refuses the kernel cache folder {d}: it belongs to another user "
            f"(uid {st.st_uid}). Point FUSEGRAD_CACHE_DIR at a folder of your own."
        )
    return d


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()[:24]


class KernelCache:
    """Kernels by the hash of their code: in memory, then on disk, then freshly written."""

    def __init__(self, prelude: str = PRELUDE):
        self.mem: dict[str, object] = {}
        self.prelude = prelude  # imports the kernels need (the CUDA renderer has its own)

    def get(self, header: str, body: str):
        """(dispatcher, name, path) for a kernel body whose function is called KNAME."""
        h = _digest(self.prelude + body)
        name = f"fg_{h}"
        hit = self.mem.get(name)
        if hit is not None:
            return hit
        d = _checked_dir()
        path = os.path.join(d, name + ".py")
        code = self.prelude + body.replace("KNAME", name)
        if not _valid(path, h, name):
            _atomic_write(path, header + MARKER + code)
        mod = _import(name, path)
        disp = getattr(mod, name)
        self.mem[name] = (disp, name, path)
        return self.mem[name]


def _valid(path: str, h: str, name: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return False
    if MARKER not in text:
        return False
    code = text.split(MARKER, 1)[1]
    return _digest(code.replace(name, "KNAME")) == h


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _import(name: str, path: str):
    mod = sys.modules.get(name)
    if mod is not None and getattr(mod, "__file__", None) == path:
        return mod
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


KERNELS = KernelCache()
