"""Evaluation of points: the `Evaluator` and its four parts, one file each.

* `sources`: data as batches on the device (materialised or streamed);
* `functional`: the private copy of the model, run at explicit points (loop or vmap);
* `batchnorm`: the BN policies, `default_bn`, fresh statistics at points;
* `family_path`: a family's points chunk by chunk, with the shared first layer of linear families;
* `evaluator`: the `Evaluator` that puts them together, and `Metrics`;
* `precision`: `compare_precision`, a reduced-precision evaluation against fp32 on a few points.
"""

from .batchnorm import BN_POLICIES, Statistics, check_policy, default_bn, has_batchnorm
from .evaluator import METRICS, Evaluator, Metrics, cross_entropy
from .functional import FunctionalModule, batchnorm_modules, map_points
from .precision import compare_precision, format_check
from .sources import Source, make_source

__all__ = [
    "BN_POLICIES",
    "Evaluator",
    "FunctionalModule",
    "METRICS",
    "Metrics",
    "Source",
    "Statistics",
    "batchnorm_modules",
    "check_policy",
    "compare_precision",
    "cross_entropy",
    "default_bn",
    "format_check",
    "has_batchnorm",
    "make_source",
    "map_points",
]
