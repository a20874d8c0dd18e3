"""The barrier of a metric along a path: the one home of its definition.

Two conventions are in use in the literature, and both are reported, each under its own name:

* ``barrier_linear`` = max_t [L(t) - ((1 - t) L(0) + t L(1))]: the largest rise above the chord
  between the two ends (Entezari et al. 2022, "The role of permutation invariance in linear mode
  connectivity", their Definition 1);
* ``barrier_mean``   = max_t L(t) - (L(0) + L(1)) / 2: the peak above the mean of the ends (Frankle et al.
  2020, "Linear mode connectivity and the lottery ticket hypothesis": their *instability* is this on the
  test error; Ainsworth et al. 2022, "Git Re-Basin": their loss barrier). Garipov et al. 2018 report the
  peak along the curve itself, and Draxler et al. 2018 the highest point of the path (its saddle energy);
  both are the ``max`` of a path's summary.

Both are >= 0 when t includes the ends; ``barrier_linear`` is 0 for a path that never rises above its
chord, ``barrier_mean`` is half the gap between the ends for a monotone path. They agree when the two ends
have the same value.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def barrier(values: Tensor | Sequence[float], t: Tensor | Sequence[float]) -> dict[str, float]:
    """``values`` [T] of a metric at path coordinates ``t`` [T] (t[0] = 0 and t[-1] = 1 are the ends).

    Returns ``{"barrier_linear": ..., "barrier_mean": ...}``.
    """
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    tt = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
    if v.numel() != tt.numel() or v.numel() < 2:
        raise ValueError(f"barrier needs values and t of the same length >= 2; got {v.numel()} and {tt.numel()}")
    start, end = v[0], v[-1]
    chord = (1.0 - tt) * start + tt * end
    return {"barrier_linear": float((v - chord).max()), "barrier_mean": float(v.max() - 0.5 * (start + end))}
