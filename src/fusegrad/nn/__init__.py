"""``fusegrad.nn``: modules, ``functional`` and ``init``, named as in ``torch.nn``."""

from fusegrad.tensor import Parameter

from . import functional, init
from .modules import (
    GELU,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Identity,
    L1Loss,
    LayerNorm,
    Linear,
    LogSoftmax,
    Module,
    ModuleDict,
    ModuleList,
    MSELoss,
    NLLLoss,
    ReLU,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)

__all__ = [
    "Parameter",
    "functional",
    "init",
    "Module",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "Identity",
    "Linear",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "GELU",
    "SiLU",
    "Softmax",
    "LogSoftmax",
    "Flatten",
    "LayerNorm",
    "Dropout",
    "MSELoss",
    "L1Loss",
    "NLLLoss",
    "CrossEntropyLoss",
]
