"""Permutation symmetry of neural networks: specs, random permutations, re-basin alignment, swap paths.

Reordering the hidden units of a layer (with every tensor that indexes them) leaves the function
unchanged, so every minimum comes with n! copies of itself. This package

* describes which tensor axes (and BatchNorm running statistics) share one permutation
  (`PermutationSpec`, in `spec`) and applies permutations (`apply`, `random_perms`);
* infers that spec from the ``torch.fx`` graph with a table of per-operation rules (`infer_spec`, in
  `infer`; any model, given an input shape or some data: ``infer_spec(model, data=(X, y))``); the
  walk's state is in `context`, the rules in `rules` (layers, channel-wise operations) and
  `rules_layout` (embedding, attention, concatenation, indexing, transposes);
* aligns one model to another (Ainsworth et al. 2022): `weight_matching`, `activation_matching`,
  `ste_matching`; `align` also measures the straight line before and after, with `repair`
  (Jordan et al. 2022) or the plain BN reset;
* walks the path that swaps two units (Brea et al. 2019): `swap_path`, `swap_analysis`, `best_pair`.

```python
>>> spec = infer_spec(model)
>>> b_perm = apply(spec, state_b, weight_matching(spec, params_a, params_b))
```
"""

from .align import AlignResult, align, interpolation, match, state_of
from .infer import example_input, infer_spec
from .match import activation_matching, ste_matching, weight_matching
from .repair import RepairedLine, Repairer, repair
from .spec import Axis, PermutationSpec, apply, compose, identity_perms, invert, permute_tensor, random_perms
from .swap import best_pair, swap_analysis, swap_path

__all__ = [
    "AlignResult",
    "Axis",
    "PermutationSpec",
    "RepairedLine",
    "Repairer",
    "activation_matching",
    "align",
    "apply",
    "best_pair",
    "compose",
    "example_input",
    "identity_perms",
    "infer_spec",
    "interpolation",
    "invert",
    "match",
    "permute_tensor",
    "random_perms",
    "repair",
    "state_of",
    "ste_matching",
    "swap_analysis",
    "swap_path",
    "weight_matching",
]
