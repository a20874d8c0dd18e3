"""Curvature of the loss at a point: Hessian-vector products, eigenvalues, traces, spectral densities.

Beside the Hessian, two positive semi-definite approximations share its interface and every routine
below: the generalised Gauss-Newton `GGN` and the `EmpiricalFisher` (``curvature="ggn" | "fisher"`` in
`eigenvalues`, `trace`, `density`, ...; `curvature_operator` builds one by name). Under ``torchrun``
each rank builds the operator on its shard of the data (`shard`) and products are all-reduced.

Everything here is matrix-free and built on one operator, `Hessian`: the Hessian of the mean loss over a
whole dataset, restricted to a chosen set of parameters, at an explicit point, evaluated through the
`Evaluator` (which owns the data, the batching and the batch-norm policy):

    H v = sum_b (n_b / N) H_b v          (H_b: Hessian of batch b's mean loss; exact for unequal batches)

The package has three layers, each importable on its own; every public name is re-exported here, so
``from modescape import curvature as cv; cv.eigenvalues(...)`` is the usual entry point:

* the operators, named by `operators` (`OPERATORS`, `curvature_operator`, `CURVATURES`; it re-exports
  the rest) and defined in three modules: `base` (the `CurvatureOperator` base class with its vectors,
  products, batch weighting and rank combination; the parameter filters `select_params` /
  `param_groups`; `as_evaluator`; `shard`), `hessian` (the `Hessian`: its retained gradient graph,
  products, ``matmat``, ``dense``, the measurement that picks the HVP method; `hvp(model, data, point,
  v)`, the one-call product) and `gauss_newton` (`GGN`, `EmpiricalFisher`).
* `krylov`: algorithms that need only a symmetric ``matvec`` (so they also run on a dense matrix in
  tests) and never import the operator: `lanczos` (returning a `LanczosResult`), `ritz`,
  `power_iteration`, `trace_of` (Hutchinson / Hutch++, returning a `TraceResult`), and the seeded
  random vectors `rademacher` / `random_unit`.
* `spectrum`: the user-level functions that build an operator and run those algorithms on it:
  `eigenvalues`, `extreme_eigenvalues`, `start_vector`, `trace`, `density` (with `smooth_density`,
  `Density`; its figure is `modescape.plots.plot_density`) and `blockwise`, with their results
  (`EigenResult`, `TraceResult`).

Parameters: ``params="all"`` | ``"weights"`` | ``"biases"`` | ``"norms"`` (roles of `WeightSpace`,
comma-combinable) | a name prefix such as ``"fc0"`` or ``"stage2.0"`` | a list of prefixes. The others stay
fixed at the point, so a filter gives the diagonal block ``H[S, S]``.

HVP method: ``"double-backward"`` (grad of <grad, v>) or ``"forward-over-reverse"`` (``jvp`` of ``grad``);
``"auto"`` measures once per evaluator and keeps the faster. With ``retain`` (default ``"auto"``: when
its memory fits), the gradient's graph over the whole source is built once and kept, so a
double-backward product is a single backward pass through it.

Batch norm: the evaluator's policy. ``running`` (the default) is eval-mode BN with the point's buffers, so
H is the Hessian of the function the network computes at test time; ``recompute`` recomputes the
statistics at the point and then holds them fixed; ``train`` differentiates through the batch statistics.

On top of the operator (each also works on any symmetric ``matvec``, e.g. a dense matrix in tests):

* `eigenvalues`: Lanczos with full reorthogonalisation, stopped when every wanted Ritz pair's residual
  ``||H y - theta y|| = beta_m |s_m|`` is at most ``tol * max|theta|``; ``which`` = ``"largest"``
  (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"`` (largest |lambda|). ``method="power"`` runs
  power iteration with shifts and deflation instead, stopped on the same residual.
* `trace`: Hutchinson (Rademacher probes) and Hutch++ (exact trace on a sketched top subspace plus
  Hutchinson on the rest); both stop when the standard error of the mean is at most
  ``max(rtol |estimate|, atol)`` after ``min_samples`` probes (never on a noisy running mean).
* `density`: stochastic Lanczos quadrature: nodes and weights from several probes, smoothed with a
  Gaussian (drawn by `modescape.plots.plot_density`).
* `blockwise`: any of these per layer or per block (groups of parameter-name prefixes).
"""

from .base import ROLE_WORDS, CurvatureOperator, as_evaluator, param_groups, select_params, shard
from .gauss_newton import GGN, EmpiricalFisher
from .hessian import HVP_METHODS, Hessian, hvp
from .krylov import (
    WHICH,
    LanczosResult,
    Matvec,
    TraceResult,
    lanczos,
    power_iteration,
    rademacher,
    random_unit,
    ritz,
    trace_of,
)
from .operators import CURVATURES, OPERATORS, curvature_operator
from .spectrum import (
    Density,
    EigenResult,
    blockwise,
    density,
    eigenvalues,
    extreme_eigenvalues,
    smooth_density,
    start_vector,
    trace,
)

__all__ = [
    "CURVATURES",
    "CurvatureOperator",
    "EmpiricalFisher",
    "GGN",
    "OPERATORS",
    "curvature_operator",
    "shard",
    "Hessian",
    "hvp",
    "eigenvalues",
    "extreme_eigenvalues",
    "trace",
    "density",
    "blockwise",
    "EigenResult",
    "TraceResult",
    "Density",
    "lanczos",
    "trace_of",
    "select_params",
    "param_groups",
    "smooth_density",
    "as_evaluator",
    "LanczosResult",
    "start_vector",
    "ritz",
    "power_iteration",
    "rademacher",
    "random_unit",
    "HVP_METHODS",
    "WHICH",
    "ROLE_WORDS",
    "Matvec",
]
