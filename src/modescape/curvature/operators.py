"""Curvature operators: matrix-free products with the Hessian, the GGN or the empirical Fisher.

Three symmetric P x P matrices of the whole-dataset mean loss L(w) = (1/N) sum_i l(f(x_i; w), y_i),
restricted to a chosen set of parameters (`select_params`, `param_groups`), at an explicit point,
evaluated through the `Evaluator` (which owns the data, the batching and the batch-norm policy):

    Hessian            H v = sum_b (n_b / N) H_b v                 (H_b: Hessian of batch b's mean loss)
    Gauss-Newton (GGN) G v = sum_b (n_b / N) J_b^T Hl_b J_b v      (J_b: Jacobian of the outputs; Hl_b:
                                                                    Hessian of the batch's mean loss in
                                                                    the outputs; PSD for convex losses)
    empirical Fisher   F v = (1/N) sum_i g_i (g_i . v)             (g_i: gradient of sample i's loss)

`CurvatureOperator` holds what the three share (the point, the selected parameters, vectors and
points, ``matvec`` / ``matmat`` / ``dense``, the mean gradient, and the data-parallel combination);
`Hessian`, `GGN` and `EmpiricalFisher` only say how one batch's product is made. `curvature_operator`
builds one by name (``"hessian"``, ``"ggn"``, ``"fisher"``: `CURVATURES`); the Krylov routines
(`krylov`) and the user-level functions (`spectrum`) accept any of them.

GGN products are a ``jvp`` of the outputs, the loss's Hessian in the outputs applied to it
(forward-over-reverse on the loss alone) and a ``vjp``: two forward passes and no second derivative
of the network. Fisher products are a ``jvp`` of the per-sample losses (the [B] numbers g_i . v) and
a ``vjp`` with them. For a sequence model the per-sample loss is the mean over its positions (the
Evaluator's loss), so the "samples" of the Fisher are sequences.

Data parallel (``torchrun``): every rank builds the operator on its own shard of the data (`shard`),
and each product, trace and gradient is the all-reduced, sample-weighted sum of the ranks' products
(``sum_r (N_r / N) P_r v``, through `modescape.distributed`), so every rank holds the same vector and
the Krylov routines run unchanged and in step on every rank.

`hvp` is the one-call form of a single Hessian product.

Where: the shared base (`CurvatureOperator`, `select_params`, `param_groups`, `as_evaluator`, `shard`)
is in `base`, the Hessian (retained graph, products, timing; `hvp`) in `hessian`, the GGN and the
empirical Fisher in `gauss_newton`. This module names them (`OPERATORS`, `curvature_operator`) and
re-exports every public name, so ``from modescape.curvature.operators import Hessian`` keeps working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..errors import UserError
from ..evaluate import Evaluator
from .base import ROLE_WORDS, CurvatureOperator, as_evaluator, param_groups, select_params, shard
from .gauss_newton import GGN, EmpiricalFisher
from .hessian import HVP_METHODS, Hessian, hvp

CURVATURES = ("hessian", "ggn", "fisher")

OPERATORS: dict[str, type[CurvatureOperator]] = {"hessian": Hessian, "ggn": GGN, "fisher": EmpiricalFisher}


def curvature_operator(
    kind: str, model: nn.Module | Evaluator, data: Any = None, point: Mapping[str, Tensor] | None = None, **kwargs
) -> CurvatureOperator:
    """The operator named ``kind`` (``"hessian"``, ``"ggn"`` or ``"fisher"``), built with ``kwargs`` as
    its class takes them. The GGN and the Fisher have one way of making products, so the Hessian's
    ``method`` ("auto" only), ``retain`` and ``retain_mb`` are accepted and ignored for them."""
    if kind not in OPERATORS:
        raise UserError(f"unknown curvature '{kind}': use one of {', '.join(CURVATURES)}")
    if kind != "hessian":
        if kwargs.pop("method", "auto") != "auto":
            raise UserError("an HVP method (double-backward, forward-over-reverse) applies to the Hessian only")
        kwargs.pop("retain", None)
        kwargs.pop("retain_mb", None)
    return OPERATORS[kind](model, data, point, **kwargs)


__all__ = [
    "CURVATURES",
    "CurvatureOperator",
    "EmpiricalFisher",
    "GGN",
    "HVP_METHODS",
    "Hessian",
    "OPERATORS",
    "ROLE_WORDS",
    "as_evaluator",
    "curvature_operator",
    "hvp",
    "param_groups",
    "select_params",
    "shard",
]
