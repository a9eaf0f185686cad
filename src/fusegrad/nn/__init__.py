"""``fusegrad.nn``: modules, ``functional`` and ``init``, named as in ``torch.nn``."""

from fusegrad.tensor import Parameter

from . import functional, init, modules
from .modules import *  # noqa: F403  (the layer and loss classes; modules.__all__ lists them)

__all__ = ["Parameter", "functional", "init", *modules.__all__]
