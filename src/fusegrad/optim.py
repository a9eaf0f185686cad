"""``fusegrad.optim``: SGD, Adam and AdamW with PyTorch's single-tensor update formulas.

Each ``step()`` applies one multi-tensor update op per parameter group (``sgd_step``,
``adam_step`` in the op registry): eager mode writes the arrays in place, and under
``fusegrad.compile`` the whole group's update is one recorded op and one kernel, while the
parameters and their state keep their identity. Hyperparameters (lr, betas, eps,
weight decay) and Adam's step count stay Python numbers: the compiler passes them as runtime
arguments, so a learning-rate schedule never recompiles. Branches test only hyperparameters.
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from copy import deepcopy
from itertools import chain
from typing import Any

import fusegrad
from fusegrad import ops
from fusegrad.tensor import Tensor, update

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class _RequiredParameter:
    def __repr__(self) -> str:
        return "<required parameter>"


required = _RequiredParameter()


def _no_grad_step(step: Callable) -> Callable:
    @functools.wraps(step)
    def wrapper(self, *args, **kwargs):
        with fusegrad.no_grad():
            return step(self, *args, **kwargs)

    return wrapper


def _typename(obj: Any) -> str:
    return type(obj).__name__


class Optimizer:
    """Base class: ``param_groups`` (dicts with every default filled in), ``state`` keyed by
    parameter, ``zero_grad``, and PyTorch's ``state_dict`` layout."""

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        self.defaults = defaults
        if isinstance(params, Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or "
                f"dicts, but got {_typename(params)}"
            )
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for group in param_groups:
            self.add_param_group(group)

    def __getstate__(self) -> dict[str, Any]:
        return {
            "defaults": self.defaults,
            "state": self.state,
            "param_groups": self.param_groups,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        s = type(self).__name__ + " ("
        for i, group in enumerate(self.param_groups):
            s += f"\nParameter Group {i}\n"
            for key in sorted(group.keys()):
                if key != "params":
                    s += f"    {key}: {group[key]}\n"
        return s + ")"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {_typename(param_group)}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            param_group["params"] = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            param_group["params"] = list(params)
        for p in param_group["params"]:
            if not isinstance(p, Tensor):
                raise TypeError(
                    "optimizer can only optimize Tensors, but one of the params is " + _typename(p)
                )
            if not (p.is_leaf or getattr(p, "retains_grad", False)):
                raise ValueError("can't optimize a non-leaf Tensor")
        for name, default in self.defaults.items():
            if default is required and name not in param_group:
                raise ValueError(
                    "parameter group didn't specify a value of required optimization "
                    f"parameter {name}"
                )
            param_group.setdefault(name, default)
        ids = [id(p) for p in param_group["params"]]
        if len(ids) != len(set(ids)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; in future, "
                "this will cause an error; see github.com/pytorch/pytorch/issues/40967 for "
                "more information",
                stacklevel=3,
            )
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if not existing.isdisjoint(ids):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every ``.grad`` (default), or zero it in place with ``set_to_none=False``."""
        fusegrad.autograd.zero_grads(chain.from_iterable(g["params"] for g in self.param_groups),
                                     set_to_none)

    def step(self, closure: Callable | None = None):
        raise NotImplementedError

    def _closure_loss(self, closure: Callable | None):
        if closure is None:
            return None
        with fusegrad.enable_grad():
            return closure()

    # ------------------------------------------------------------------ state_dict
    def state_dict(self) -> dict[str, Any]:
        """``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``.

        Indices number parameters in group order, as PyTorch does. State tensors are the live
        ones (not copies); Adam's Python step count is presented as a 0-dim float32 tensor.
        """
        mapping: dict[int, int] = {}
        start = 0

        def pack_group(group: dict[str, Any]) -> dict[str, Any]:
            nonlocal start
            packed = {k: v for k, v in group.items() if k != "params"}
            for i, p in enumerate(group["params"], start):
                mapping.setdefault(id(p), i)
            packed["params"] = [mapping[id(p)] for p in group["params"]]
            start += len(packed["params"])
            return packed

        param_groups = [pack_group(g) for g in self.param_groups]
        packed_state = {}
        for k, v in self.state.items():
            key = mapping[id(k)] if isinstance(k, Tensor) else k
            packed_state[key] = {n: _present(n, x) for n, x in v.items()}
        return {"state": packed_state, "param_groups": param_groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``: groups must match in number and size; floating state is
        cast to its parameter's dtype and device; hyperparameters come from the saved groups."""
        state_dict = state_dict.copy()
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(
            len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups, strict=True)
        ):
            raise ValueError(
                "loaded state dict contains a parameter group that doesn't match the size of "
                "optimizer's group"
            )
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in saved_groups),
                chain.from_iterable(g["params"] for g in groups),
                strict=True,
            )
        )

        def cast(param: Tensor, value: Any, key: Any = None) -> Any:
            if key == "step":
                return float(value.item()) if isinstance(value, Tensor) else value
            if isinstance(value, Tensor):
                if value.dtype.is_floating_point and value.dtype != param.dtype:
                    value = value.to(param.dtype)
                if value.device != param.device:
                    value = value.to(param.device)
                return value
            if isinstance(value, dict):
                return {k: cast(param, v, k) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(cast(param, v) for v in value)
            return value

        state: defaultdict[Any, dict[str, Any]] = defaultdict(dict)
        for k, v in state_dict["state"].items():
            if k in id_map:
                param = id_map[k]
                state[param] = cast(param, v)
            else:
                state[k] = v
        for group, new_group in zip(groups, saved_groups, strict=True):
            new_group["params"] = group["params"]
        self.__setstate__({"state": state, "param_groups": saved_groups})


def _present(name: str, value: Any) -> Any:
    if name == "step" and isinstance(value, (int, float)):
        return fusegrad.tensor(float(value))
    return value


# ============================================================================ SGD
class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum; PyTorch's
    ``_single_tensor_sgd``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        if lr is not required and lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            "foreach": foreach,
            "differentiable": differentiable,
            "fused": fused,
        }
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, defaults)

    @_no_grad_step
    def step(self, closure: Callable | None = None):
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, momentum = group["lr"], group["momentum"]
            dampening, weight_decay = group["dampening"], group["weight_decay"]
            args, first = [], []
            for p in params:
                grad = p.grad
                buf = grad  # read, never written, without momentum
                if momentum != 0:
                    state = self.state[p]
                    buf = state.get("momentum_buffer")
                    first.append(buf is None)
                    if buf is None:  # the first step sets buf = grad (PyTorch: grad.clone())
                        buf = state["momentum_buffer"] = fusegrad.zeros_like(p)
                else:
                    first.append(False)
                args += [p, grad, buf]
            _update(
                "sgd_step", args, (-lr, momentum, 1 - dampening, weight_decay), (),
                n=len(params), maximize=group["maximize"], decay=weight_decay != 0,
                use_momentum=momentum != 0,
                nesterov=group["nesterov"], first=tuple(first),
            )
        return loss


def _update(name: str, tensors: list, shared: tuple, each: tuple, **attrs) -> None:
    """One multi-tensor update op over a parameter group (one kernel when compiled)."""
    update(ops.REGISTRY[name], (*tensors, *shared, *each), attrs)


# ============================================================================ Adam / AdamW
class Adam(Optimizer):
    """Adam (and, with ``decoupled_weight_decay``, AdamW); PyTorch's ``_single_tensor_adam``
    with the step count a Python number in ``state[p]["step"]``."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
    ) -> None:
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not (isinstance(betas[0], float) and isinstance(betas[1], float)):
            raise ValueError("betas must be either both floats or both Tensors")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    @_no_grad_step
    def step(self, closure: Callable | None = None):
        loss = self._closure_loss(closure)
        for group in self.param_groups:
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            eps = group["eps"]
            weight_decay = group["weight_decay"]
            amsgrad = group["amsgrad"]
            maximize = group["maximize"]
            decoupled = group["decoupled_weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            args, each = [], []
            for p in params:
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0.0
                    state["exp_avg"] = fusegrad.zeros_like(p)
                    state["exp_avg_sq"] = fusegrad.zeros_like(p)
                    if amsgrad:
                        state["max_exp_avg_sq"] = fusegrad.zeros_like(p)
                state["step"] += 1
                step = state["step"]
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                exp_avg_sq = state["exp_avg_sq"]
                args += [p, p.grad, state["exp_avg"], exp_avg_sq,
                         state["max_exp_avg_sq"] if amsgrad else exp_avg_sq]
                each += [-(lr / bias_correction1), bias_correction2**0.5]
            weight = 1 - beta1  # exp_avg.lerp_(grad, weight), ATen's two-sided lerp formula
            _update(
                "adam_step", args,
                (beta2, 1 - beta2, weight, 1 - weight, eps, weight_decay, 1 - lr * weight_decay),
                tuple(each), n=len(params), maximize=maximize, decay=weight_decay != 0,
                decoupled=decoupled,
                amsgrad=amsgrad, small_weight=abs(weight) < 0.5,
            )
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay: ``param *= 1 - lr * weight_decay`` before the update."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            foreach=foreach,
            maximize=maximize,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            decoupled_weight_decay=True,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
