"""``fusegrad.nn.functional``: PyTorch's functional API as composites of Tensor ops.

Everything here is written in fusegrad Tensor ops only (elementwise ops and sum/mean/amax
reductions), never numpy, so the same code runs eagerly and on lazy tensors under
``fusegrad.compile``, where it fuses into a few loops. Python hyperparameters (``p``, ``eps``,
``label_smoothing``) stay Python numbers: the compiler treats them as runtime arguments.
Branches look only at hyperparameters, shapes and dtypes, never at tensor values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import fusegrad
from fusegrad.errors import user_line
from fusegrad.tensor import Tensor

__all__ = [
    "linear",
    "relu",
    "gelu",
    "tanh",
    "sigmoid",
    "silu",
    "leaky_relu",
    "softmax",
    "log_softmax",
    "dropout",
    "layer_norm",
    "mse_loss",
    "l1_loss",
    "nll_loss",
    "cross_entropy",
    "one_hot",
]


# ----------------------------------------------------------------------------- reductions
_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> str:
    """Validate ``reduction`` as PyTorch's ``_Reduction.get_enum`` does."""
    if reduction == "elementwise_mean":
        warnings.warn(
            "reduction='elementwise_mean' is deprecated. Please use reduction='mean' instead.",
            stacklevel=3,
        )
        return "mean"
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    return reduction


def _legacy_reduction(size_average: bool | None, reduce: bool | None) -> str:
    """PyTorch's ``_Reduction.legacy_get_string`` for the deprecated size_average/reduce."""
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    ret = "mean" if (size_average and reduce) else ("sum" if reduce else "none")
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{ret}' instead.",
        stacklevel=3,
    )
    return ret


def _resolve_reduction(size_average, reduce, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return _legacy_reduction(size_average, reduce)
    return _check_reduction(reduction)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _shape(t: Tensor) -> tuple:
    return tuple(t.shape)


# ----------------------------------------------------------------------------- layers
def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` as one registry op (grad_fn AddmmBackward0)."""
    return fusegrad.ops.linear(input, weight, bias)


def relu(input: Tensor, inplace: bool = False) -> Tensor:
    return input.relu_() if inplace else input.relu()


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """Exact erf GELU (one registry op), or the tanh approximation composed of Tensor ops."""
    if approximate == "none":
        return fusegrad.ops.gelu(input)
    if approximate == "tanh":
        inner = (input + input * input * input * 0.044715) * math.sqrt(2.0 / math.pi)
        return input * 0.5 * (inner.tanh() + 1.0)
    raise RuntimeError(
        f"gelu: approximate argument must be either none or tanh, got {approximate!r}"
    )


def tanh(input: Tensor) -> Tensor:
    return input.tanh()


def sigmoid(input: Tensor) -> Tensor:
    return input.sigmoid()


def silu(input: Tensor, inplace: bool = False) -> Tensor:
    out = input * input.sigmoid()
    if inplace:
        return input.copy_(out)
    return out


def leaky_relu(input: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    out = fusegrad.where(input > 0, input, input * negative_slope)
    if inplace:
        return input.copy_(out)
    return out


def _softmax_dim(name: str, ndim: int) -> int:
    warnings.warn(
        f"Implicit dimension choice for {name} has been deprecated. "
        "Change the call to include dim=X as an argument.",
        stacklevel=3,
    )
    return 0 if ndim in (0, 1, 3) else 1


def softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    if dim is None:
        dim = _softmax_dim("softmax", input.dim())
    if dtype is not None:
        input = input.to(dtype)
    return input.softmax(dim)


def log_softmax(input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype=None) -> Tensor:
    if dim is None:
        dim = _softmax_dim("log_softmax", input.dim())
    if dtype is not None:
        input = input.to(dtype)
    return input.log_softmax(dim)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1-p)``.

    The mask is ``rand_like(input) >= p`` drawn from fusegrad's generator, so eager and
    compiled steps with the same seed produce the same mask.
    """
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return input
    if p == 1.0:
        out = input * 0.0
    else:
        keep = (fusegrad.rand_like(input) >= p).to(input.dtype)
        out = input * (keep * (1.0 / (1.0 - p)))
    if inplace:
        return input.copy_(out)
    return out


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """(x - mean) * rsqrt(var + eps) over the trailing ``normalized_shape`` dims (biased var)."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    shape = _shape(input)
    if k == 0 or len(shape) < k or shape[len(shape) - k :] != normalized_shape:
        raise RuntimeError(
            f"layer_norm: given normalized_shape={list(normalized_shape)}, expected input with "
            f"shape [*, {', '.join(str(s) for s in normalized_shape)}], but got input of "
            f"size {list(shape)} (at {user_line()})"
        )
    dims = tuple(range(-k, 0))
    mean = input.mean(dims, keepdim=True)
    centered = input - mean
    var = (centered * centered).mean(dims, keepdim=True)
    out = centered * (var + eps).rsqrt()
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


# ----------------------------------------------------------------------------- losses
def _warn_size_mismatch(input: Tensor, target: Tensor) -> None:
    if _shape(target) != _shape(input):
        warnings.warn(
            f"Using a target size ({target.shape}) that is different to the input size "
            f"({input.shape}). This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=3,
        )


def _pointwise_loss(errors: Tensor, input: Tensor, weight: Tensor | None, reduction: str):
    if weight is None:
        return _reduce(errors, reduction)
    if _shape(weight) != _shape(input):
        raise ValueError("Weights and input must have the same size.")
    weighted = errors * weight
    if reduction == "mean":
        return weighted.sum() / weight.sum()
    return _reduce(weighted, reduction)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean squared error; like PyTorch, different shapes warn and then broadcast."""
    _warn_size_mismatch(input, target)
    reduction = _resolve_reduction(size_average, reduce, reduction)
    diff = input - target
    return _pointwise_loss(diff * diff, input, weight, reduction)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    _warn_size_mismatch(input, target)
    reduction = _resolve_reduction(size_average, reduce, reduction)
    return _pointwise_loss((input - target).abs(), input, weight, reduction)


def _class_layout(input: Tensor) -> tuple[int, int, list[int]]:
    """(class dim, number of classes, shape that puts a (C,) vector on the class dim)."""
    if input.dim() < 1:
        raise RuntimeError(f"Expected 1 or more dimensions (got {input.dim()})")
    class_dim = 0 if input.dim() == 1 else 1
    n_classes = input.shape[class_dim]
    bshape = [1] * input.dim()
    bshape[class_dim] = n_classes
    return class_dim, n_classes, bshape


def _check_class_weight(weight: Tensor | None, n_classes: int, op: str) -> None:
    if weight is not None and (weight.dim() != 1 or weight.shape[0] != n_classes):
        raise RuntimeError(
            f"{op}: weight tensor should be defined either for all {n_classes} classes or no "
            f"classes but got weight tensor of shape: {list(weight.shape)}"
        )


def _index_target_weights(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    op: str,
    mask_ignored: bool,
) -> Tensor:
    """Per-(element, class) weights ``w`` with w[n, c] = weight[c] * (c == target[n]).

    Built as a one-hot mask ``arange(C) == target.unsqueeze(class_dim)`` (an elementwise
    compare that fuses) instead of fancy indexing. An ``ignore_index`` outside [0, C) never
    matches a class, so those rows are already zero; one inside [0, C) (or ``mask_ignored``)
    multiplies by ``target != ignore_index`` explicitly.
    """
    class_dim, n_classes, bshape = _class_layout(input)
    tdt = target.dtype
    if tdt.is_floating_point or tdt.name == "bool":
        raise RuntimeError(
            f"{op}: expected target of class indices with dtype fusegrad.int64 but found "
            f"{tdt} (input shape {list(input.shape)}, target shape {list(target.shape)}); "
            "float targets are read as class probabilities only when they have the input's "
            f"shape (at {user_line()})"
        )
    expected = _shape(input)[:class_dim] + _shape(input)[class_dim + 1 :]
    if input.dim() > 1 and target.dim() >= 1 and target.shape[0] != input.shape[0]:
        raise RuntimeError(
            f"{op}: Expected input batch_size ({input.shape[0]}) to match target batch_size "
            f"({target.shape[0]}) (input shape {list(input.shape)}, target shape "
            f"{list(target.shape)}) (at {user_line()})."
        )
    if _shape(target) != expected:
        raise RuntimeError(
            f"{op}: expected target of shape {list(expected)} for input of shape "
            f"{list(input.shape)}, got target of shape {list(target.shape)} (at {user_line()})"
        )
    _check_class_weight(weight, n_classes, op)
    tgt = target.unsqueeze(class_dim)
    classes = fusegrad.arange(n_classes, device=target.device).reshape(bshape)
    w = (classes == tgt).to(input.dtype)
    if weight is not None:
        w = w * weight.reshape(bshape)
    if mask_ignored or 0 <= ignore_index < n_classes:
        w = w * (tgt != ignore_index).to(input.dtype)
    return w


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log likelihood of class-index targets, given log-probabilities ``input``."""
    reduction = _resolve_reduction(size_average, reduce, reduction)
    w = _index_target_weights(input, target, weight, ignore_index, "nll_loss", False)
    return _nll_from_weights(input, w, reduction)


def _nll_from_weights(logp: Tensor, w: Tensor, reduction: str) -> Tensor:
    class_dim = 0 if logp.dim() == 1 else 1
    if reduction == "none":
        return -(logp * w).sum(class_dim)
    total = -(logp * w).sum()
    if reduction == "sum":
        return total
    return total / w.sum()


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """PyTorch's cross_entropy: class-index targets (int64, input shape minus the class dim)
    or class-probability targets (float, same shape as input); optional class ``weight``,
    ``ignore_index`` and ``label_smoothing``, reduced as PyTorch does."""
    reduction = _resolve_reduction(size_average, reduce, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    class_dim, n_classes, bshape = _class_layout(input)
    logp = input.log_softmax(class_dim)

    if _shape(input) == _shape(target):  # class probabilities
        if not target.dtype.is_floating_point:
            raise RuntimeError(
                "cross_entropy: expected floating point type for target with class "
                f"probabilities, got {target.dtype} (input shape {list(input.shape)}, "
                f"target shape {list(target.shape)}) (at {user_line()})"
            )
        if ignore_index >= 0:
            raise RuntimeError("ignore_index is not supported for floating point target")
        _check_class_weight(weight, n_classes, "cross_entropy")
        probs = target
        if label_smoothing > 0.0:
            probs = target * (1.0 - label_smoothing) + label_smoothing / n_classes
        prod = logp * probs
        if weight is not None:
            prod = prod * weight.reshape(bshape)
        if reduction == "none":
            return -prod.sum(class_dim)
        if reduction == "sum":
            return -prod.sum()
        return -prod.sum() / (input.numel() // n_classes)

    w = _index_target_weights(input, target, weight, ignore_index, "cross_entropy", False)
    nll = _nll_from_weights(logp, w, reduction)
    if label_smoothing <= 0.0:
        return nll
    # PyTorch: (1 - ls) * nll + ls / C * smooth, where smooth = -sum_c weight[c] * logp[c],
    # zeroed at ignored targets and normalised by the same total weight as nll.
    valid = (target != ignore_index).to(input.dtype)
    per_class = logp if weight is None else logp * weight.reshape(bshape)
    smooth = -per_class.sum(class_dim) * valid
    if reduction == "none":
        ret = smooth
    elif reduction == "sum":
        ret = smooth.sum()
    else:
        ret = smooth.sum() / w.sum()
    return nll * (1.0 - label_smoothing) + ret * (label_smoothing / n_classes)


def one_hot(tensor: Tensor, num_classes: int = -1) -> Tensor:
    """int64 one-hot encoding along a new last dim, as ``arange(C) == tensor.unsqueeze(-1)``.

    ``num_classes=-1`` reads ``tensor.max()``, a value: under ``fusegrad.compile`` that is a
    realization point (graph break); pass ``num_classes`` to keep the step in one graph.
    """
    if tensor.dtype.is_floating_point or tensor.dtype.name == "bool":
        raise RuntimeError(
            f"one_hot is only applicable to index tensor of type LongTensor, got {tensor.dtype} "
            f"(at {user_line()})"
        )
    if num_classes == -1:
        num_classes = int(tensor.max().item()) + 1 if tensor.numel() > 0 else 0
    return (tensor.unsqueeze(-1) == fusegrad.arange(num_classes, device=tensor.device)).long()
