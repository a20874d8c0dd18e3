"""Infer a model's `PermutationSpec` from its ``torch.fx`` graph, one small rule per kind of operation.

Why: writing a spec by hand for every architecture is tedious and easy to get wrong (a forgotten
running statistic silently changes the function). `infer_spec(model)` traces the model with
``torch.fx`` (`trace`), learns every node's shape with one forward pass (`ShapeProp`), and
propagates "which permutation indexes the channel axis" through the graph in order: every Linear /
Conv / Embedding output starts a new permutation; norms, activations, pooling and flattening pass it
on; an addition ties its inputs' permutations into one (a residual stream shares one permutation
across all its blocks, projection shortcuts included); a concatenation along the channels keeps each
part's permutation on its own segment; the model's input and output are fixed. The channel axis is
axis 1 for MLPs and conv nets and the last axis of the ``[B, T, C]`` values of sequence models.

Some permutations act on part of an axis: attention heads (a multi-head attention module is one node,
handled by `rule_attention` / `rule_multihead_attention`: heads permuted as wholes, the dimensions
inside every head permuted alike, one permutation shared by queries and keys and another by values
and the output projection's columns), the groups of a grouped convolution or of a GroupNorm and the
channels inside every group. A group structure met after a permutation was started *refines* it
(`Groups.refine`): the permutation becomes a permutation of the groups times one of the channels
inside them (the same in every group), and every axis it was claimed on is split accordingly.

How: each ``call_module`` node is handled by the rule `MODULE_RULES` gives for its class (the most
derived class listed wins), each ``call_function`` / ``call_method`` node by the rule
`FUNCTION_RULES` gives for its name. A rule is ``rule(ctx, node) -> Val | None``: it reads its
inputs' values from the `InferContext`, records the tensor axes it touches (``ctx.claim``), ties
permutations (``ctx.groups.union``) and returns what is known of its output. What no rule covers,
or what fx cannot trace, raises a `UserError` naming the node; write that spec by hand
(`PermutationSpec.from_dict`, ``--spec FILE``) or declare custom channel-wise ops with
``elementwise=``.

Where: this module holds the tables, the dispatchers (`module_rule`, `function_rule`), the tracer and
the walk; the vocabulary the rules share (`Groups`, `Val`, `InferContext`) is in `context`, the rules
for layers and channel-wise operations in `rules`, and those that move, cut or start the channel axis
(embedding, attention, concatenation, indexing, transposes) in `rules_layout`. Every rule and every
name of `context` is importable from here as well.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError
from ..zoo.models import SelfAttention
from .context import Groups, InferContext, Rule, Val, flat_vals, groups_of, target_name
from .rules import (
    rule_activation,
    rule_constant,
    rule_fixed,
    rule_flatten,
    rule_linear,
    rule_norm,
    rule_passthrough,
    rule_prelu,
    rule_reduce,
    rule_scale,
    rule_size,
    rule_tie,
)
from .rules_layout import (
    rule_attention,
    rule_cat,
    rule_embedding,
    rule_getitem,
    rule_multihead_attention,
    rule_transpose,
)
from .spec import Axis, PermutationSpec

# -- the tables ------------------------------------------------------------------------------------

MODULE_RULES: dict[type, Rule] = {
    **dict.fromkeys((nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), rule_linear),
    nn.Embedding: rule_embedding,
    **dict.fromkeys(
        (
            nn.BatchNorm1d,
            nn.BatchNorm2d,
            nn.BatchNorm3d,
            nn.SyncBatchNorm,
            nn.LazyBatchNorm1d,
            nn.LazyBatchNorm2d,
            nn.LazyBatchNorm3d,
            nn.InstanceNorm1d,
            nn.InstanceNorm2d,
            nn.InstanceNorm3d,
            nn.LazyInstanceNorm1d,
            nn.LazyInstanceNorm2d,
            nn.LazyInstanceNorm3d,
            nn.GroupNorm,
            nn.LayerNorm,
        ),
        rule_norm,
    ),
    **dict.fromkeys(
        (
            nn.ReLU,
            nn.Tanh,
            nn.GELU,
            nn.SiLU,
            nn.Sigmoid,
            nn.LeakyReLU,
            nn.ELU,
            nn.Softplus,
            nn.Mish,
            nn.Hardtanh,
            nn.ReLU6,
            nn.Hardswish,
            nn.Hardsigmoid,
        ),
        rule_activation,
    ),
    nn.PReLU: rule_prelu,
    **dict.fromkeys(
        (
            nn.Identity,
            nn.Dropout,
            nn.Dropout1d,
            nn.Dropout2d,
            nn.MaxPool1d,
            nn.MaxPool2d,
            nn.MaxPool3d,
            nn.AvgPool1d,
            nn.AvgPool2d,
            nn.AvgPool3d,
            nn.AdaptiveAvgPool1d,
            nn.AdaptiveAvgPool2d,
            nn.AdaptiveAvgPool3d,
            nn.AdaptiveMaxPool1d,
            nn.AdaptiveMaxPool2d,
            nn.AdaptiveMaxPool3d,
        ),
        rule_passthrough,
    ),
    nn.Flatten: rule_flatten,
    SelfAttention: rule_attention,
    nn.MultiheadAttention: rule_multihead_attention,
}
"""Module class -> rule; a module's rule is that of the first class of its MRO listed here."""

LEAF_MODULES: tuple[type, ...] = (SelfAttention,)
"""Module classes outside ``torch.nn`` that `trace` keeps as one node (their rule sees the whole module)."""

MULTI_INPUT_MODULES: tuple[type, ...] = (nn.MultiheadAttention,)
"""Module classes whose rule takes several tensor inputs (query, key, value)."""

FUNCTION_RULES: dict[str, Rule] = {
    **dict.fromkeys(
        ("relu", "tanh", "gelu", "silu", "sigmoid", "leaky_relu", "elu", "softplus", "relu6", "hardtanh", "mish"),
        rule_activation,
    ),
    **dict.fromkeys(
        (
            "dropout",
            "max_pool1d",
            "max_pool2d",
            "avg_pool1d",
            "avg_pool2d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_max_pool2d",
            "contiguous",
            "clone",
            "detach",
        ),
        rule_passthrough,
    ),
    **dict.fromkeys(("truediv", "div", "neg"), rule_scale),
    **dict.fromkeys(("add", "sub", "mul", "iadd", "isub", "imul"), rule_tie),
    **dict.fromkeys(("flatten", "view", "reshape"), rule_flatten),
    **dict.fromkeys(("mean", "amax", "sum"), rule_reduce),
    **dict.fromkeys(("getattr", "size", "dim"), rule_size),
    "getitem": rule_getitem,
    **dict.fromkeys(("transpose", "permute"), rule_transpose),
    **dict.fromkeys(("cat", "concat", "concatenate"), rule_cat),
}
"""Function or method name (``node.target.__name__`` or the method's name) -> rule."""


def module_rule(ctx: InferContext, node: fx.Node) -> Rule:
    """The rule for a ``call_module`` node: by class, else `rule_activation` if named in
    ``elementwise=``, else `rule_fixed`."""
    mod = ctx.modules[target_name(node)]
    for cls in type(mod).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return rule_activation if type(mod).__name__ in ctx.extra else rule_fixed


def function_rule(ctx: InferContext, node: fx.Node) -> Rule:
    """The rule for a ``call_function`` / ``call_method`` node: `rule_constant` without tensor inputs,
    `rule_activation` if named in ``elementwise=``, else by name, else `rule_fixed`."""
    name = target_name(node)
    if not ctx.ins(node):
        return rule_constant
    if name in ctx.extra:
        return rule_activation
    return FUNCTION_RULES.get(name, rule_fixed)


# -- inputs ----------------------------------------------------------------------------------------


def example_input(data: Any, n: int = 2) -> Tensor:
    """The first ``n`` inputs of ``data``: ``(X, y)`` tensors, a Dataset, a DataLoader or any iterable of
    ``(x, y)`` batches, a dict of those (its ``"train"`` entry, else the first), or an object with
    ``.train`` (a zoo `DataSplit`). Targets are ignored; raises `UserError` for anything else."""
    if isinstance(data, Tensor):
        return data[:n]
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        return data[0][:n]
    if isinstance(data, dict) and data:
        return example_input(data["train"] if "train" in data else next(iter(data.values())), n)
    if hasattr(data, "train") and not isinstance(data, (nn.Module, torch.utils.data.Dataset)):
        return example_input(data.train, n)
    if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
        xs = [_input_of(data[i]) for i in range(min(n, len(data)))]  # type: ignore[arg-type]  # a map-style Dataset has __len__
        x = torch.stack(xs) if xs and all(isinstance(v, Tensor) for v in xs) else (xs[0] if xs else None)
    elif hasattr(data, "__iter__") and not isinstance(data, dict):
        x = _input_of(next(iter(data), None))
        x = x[:n] if isinstance(x, Tensor) else x
    else:
        raise UserError(
            f"example_input: data must be (X, y) tensors, a Dataset, a DataLoader, an iterable of "
            f"(x, y) batches, a dict of those or a split with .train; got {type(data).__name__}"
        )
    if not isinstance(x, Tensor):
        raise UserError(f"example_input: the data holds no input tensor (empty, or inputs of type {type(x).__name__})")
    return x


def _input_of(item: Any) -> Any:
    return item[0] if isinstance(item, (tuple, list)) else item


def _input_for(model: nn.Module, input_shape: Sequence[int] | None, example: Tensor | None, data: Any) -> Tensor:
    if example is not None:
        return example
    if input_shape is None:
        spec = getattr(model, "modescape_spec", None)
        if spec and "input_shape" in spec:
            input_shape = spec["input_shape"]
    first = next(iter(model.parameters()), None)
    dtype = first.dtype if first is not None else torch.float32
    device = first.device if first is not None else "cpu"
    if input_shape is None and data is not None:
        x = example_input(data)
        return x.to(device=device, dtype=dtype) if x.is_floating_point() else x.to(device)
    if input_shape is None:
        raise UserError(
            "infer_spec needs the shape of one input: pass input_shape=(C, H, W) or (features,), "
            "example=a batch of inputs, or data=the training data ((X, y), a Dataset or a DataLoader)"
        )
    if any(isinstance(m, nn.Embedding) for m in model.modules()):  # a token model: ids, not features
        return torch.zeros((2, *[int(s) for s in input_shape]), dtype=torch.long, device=device)
    return torch.zeros((2, *[int(s) for s in input_shape]), dtype=dtype, device=device)


class _Tracer(fx.Tracer):
    """``torch.fx``'s tracer, keeping `LEAF_MODULES` (the zoo's attention) as single nodes."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, LEAF_MODULES) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.GraphModule:
    """The ``torch.fx`` graph `infer_spec` and the probes of `modescape.symmetry.probe` work on (the
    zoo's attention modules kept whole, everything else as ``fx.symbolic_trace``)."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return trace(model)
    except Exception as e:  # fx raises many exception types for untraceable code
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise UserError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {first_line}. "
            "Write its permutation spec by hand (PermutationSpec.from_dict, or --spec FILE.json in the shape "
            "printed by `modescape spec --json` for a traceable model)"
        ) from None


# -- the walk --------------------------------------------------------------------------------------


def _collect(ctx: InferContext, order: list[str]) -> PermutationSpec:
    """Every claimed axis whose group is not tied to the fixed input/output, one permutation per root;
    refined permutations are replaced by their parts, and permutations of one unit are left out."""
    groups = ctx.groups
    roots: dict[int, list[Axis]] = {}
    for (tensor, axis, offset, n_groups), (g, block) in ctx.claims.items():
        for r, b, gs, off in ctx.expand(g, block, n_groups, offset):
            roots.setdefault(r, []).append(Axis(tensor, axis, b, gs, off))
    node_groups: dict[int, list[tuple[str, str]]] = {}
    node_axes: dict[str, int] = {}
    for node, v in ctx.vals.items():
        if not isinstance(v, Val) or v.group <= 0 or v.block != 1 or v.shape is None or len(v.shape) < 2:
            continue
        r = groups.find(v.group)
        if r == 0 or r in groups.split:
            continue
        node_groups.setdefault(r, []).append((node.name, ctx.kinds.get(node.name, "other")))
        if v.axis != 1:
            node_axes[node.name] = v.axis
    sizes, axes, prods, nodes = {}, {}, {}, {}
    for r in sorted(roots):
        size = groups.size[r]
        if size == 1:
            continue
        assert size is not None  # every root that names a permutation has a size
        pname = groups.origin[r]
        sizes[pname] = int(size)
        axes[pname] = sorted(roots[r], key=lambda a: (order.index(a.name), a.axis, a.offset, a.groups))
        prods[pname] = [m for g, ms in ctx.producers.items() if groups.find(g) == r for m in ms]
        nodes[pname] = node_groups.get(r, [])
    used = {n for ns in nodes.values() for n, _ in ns}
    return PermutationSpec(sizes, axes, prods, nodes, {n: a for n, a in node_axes.items() if n in used})


def infer_spec(
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    example: Tensor | None = None,
    elementwise: Iterable[str] = (),
    data: Any = None,
) -> PermutationSpec:
    """Infer the permutation spec of ``model`` from its ``torch.fx`` graph (model not modified).

    The input that teaches every node's shape: ``example`` (a batch), else ``input_shape`` (one
    sample's shape), else ``model.modescape_spec["input_shape"]`` (zoo models), else the first
    inputs of ``data`` (any form `example_input` takes).
    ``elementwise``: names of extra module classes or functions that act on each channel separately
    (custom activations), passed through like ReLU.
    A model that carries its own spec (a ``permutation_spec()`` method, as `modescape.hf.HFModel` for the
    GPT-2 family) gets that one, without tracing.
    Raises `UserError` naming the node it cannot handle.
    """
    own = getattr(model, "permutation_spec", None)
    if callable(own):
        return own()
    work = copy.deepcopy(model).eval()
    gm = _trace(work)
    x = _input_for(model, input_shape, example, data)
    try:  # ShapeProp prints the traceback of a failing node itself: kept off the user's terminal
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(x)
    except Exception as e:
        cause = e.__cause__ or e  # ShapeProp wraps the node's error in "ShapeProp error for: node=..."
        text = str(cause).strip()
        first = text.splitlines()[0] if text else type(cause).__name__
        raise UserError(
            f"the model {type(model).__name__} cannot run on an input of shape {list(x.shape)} "
            f"({type(cause).__name__}: {first}): check that the model and the data belong together "
            "(--model / --data), or pass the right input_shape"
        ) from None
    # parameters, buffers and tied aliases (a head sharing its embedding's weight is in the state dict twice)
    order = list(
        dict.fromkeys(
            [
                *(n for n, _ in work.named_parameters()),
                *(n for n, _ in work.named_buffers()),
                *work.state_dict(keep_vars=True),
            ]
        )
    )
    ctx = InferContext(Groups(), dict(gm.named_modules()), set(order), frozenset(elementwise))
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ctx.vals[node] = Val(0, 1, ctx.shape(node))
        elif node.op == "get_attr":
            raise ctx.fail(node, "a parameter used outside its module (functional layer)")
        elif node.op == "output":
            outs: list[fx.Node] = []
            fx.node.map_arg(node.args[0], outs.append)  # every node in the (nested) output: never permuted
            for v in (v for o in outs for v in flat_vals(ctx.val(o))):
                for g in groups_of(v):
                    ctx.groups.union(g, 0, f"output '{node.name}'")
        elif node.op == "call_module":
            if not node.args or not isinstance(ctx.val(node.args[0]), Val):
                raise ctx.fail(node, "its first argument is not a traced tensor")
            if len(ctx.ins(node)) > 1 and not isinstance(ctx.modules[node.target], MULTI_INPUT_MODULES):
                raise ctx.fail(node, "a module with several tensor inputs")
            ctx.vals[node] = module_rule(ctx, node)(ctx, node)
        else:  # call_function / call_method
            ctx.vals[node] = function_rule(ctx, node)(ctx, node)
    return _collect(ctx, order)


__all__ = [
    "FUNCTION_RULES",
    "LEAF_MODULES",
    "MODULE_RULES",
    "MULTI_INPUT_MODULES",
    "Groups",
    "InferContext",
    "Rule",
    "Val",
    "example_input",
    "function_rule",
    "infer_spec",
    "module_rule",
    "target_name",
    "trace",
]
