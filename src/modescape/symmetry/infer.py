"""Infer a model's `PermutationSpec` from its ``torch.fx`` graph, one small rule per kind of operation.

Why: writing a spec by hand for every architecture is tedious and easy to get wrong (a forgotten
running statistic silently changes the function). `infer_spec(model)` traces the model with
``torch.fx.symbolic_trace``, learns every node's shape with one forward pass (`ShapeProp`), and
propagates "which permutation indexes axis 1" through the graph in order: every Linear / Conv output
starts a new permutation; norms, activations, pooling and flattening pass it on; an addition ties
its inputs' permutations into one (a residual stream shares one permutation across all its blocks,
projection shortcuts included); the model's input and output are fixed.

How: each ``call_module`` node is handled by the rule `MODULE_RULES` gives for its class (the most
derived class listed wins), each ``call_function`` / ``call_method`` node by the rule
`FUNCTION_RULES` gives for its name. A rule is ``rule(ctx, node) -> Val | None``: it reads its
inputs' values from the `InferContext`, records the tensor axes it touches (``ctx.claim``), ties
permutations (``ctx.groups.union``) and returns what is known of its output. What no rule covers,
or what fx cannot trace, raises a `UserError` naming the node; write that spec by hand
(`PermutationSpec.from_dict`, ``--spec FILE``) or declare custom channel-wise ops with
``elementwise=``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError
from .spec import Axis, PermutationSpec


class Groups:
    """Union-find over candidate permutations; group 0 is 'fixed' (the input and output units)."""

    def __init__(self) -> None:
        self.parent = [0]
        self.size: list[int | None] = [None]
        self.origin: list[str] = ["<fixed>"]

    def new(self, n: int, origin: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(n)
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, where: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        sa, sb = self.size[ra], self.size[rb]
        if sa is not None and sb is not None and sa != sb:
            raise UserError(f"{where}: ties {sa} units to {sb} units; the shapes do not match")
        lo, hi = min(ra, rb), max(ra, rb)  # the older group (or 'fixed') names the union
        self.parent[hi] = lo
        if self.size[lo] is None and lo != 0:
            self.size[lo] = self.size[hi]
        return lo


@dataclass
class Val:
    """What the propagation knows about one node's tensor: the group on axis 1 and its block."""

    group: int  # 0 = fixed
    block: int = 1
    shape: tuple[int, ...] | None = None


def target_name(node: fx.Node, default: str = "") -> str:
    """The name rules are looked up by: the module path, method name or function ``__name__``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", default)


@dataclass
class InferContext:
    """Everything the rules share while walking one graph.

    ``groups``: the union-find of permutations; ``claims``: (tensor, axis) -> (group, block);
    ``producers``: group -> module names starting it; ``vals``: fx node -> `Val` (None: not a tensor);
    ``kinds``: node name -> ``linear`` / ``norm`` / ``act`` / ``tie`` (see `PermutationSpec.nodes`);
    ``modules``: the traced model's submodules; ``tensors``: parameter and buffer names;
    ``extra``: the names passed as ``elementwise=``.
    """

    groups: Groups
    modules: dict[str, nn.Module]
    tensors: set[str]
    extra: frozenset[str] = frozenset()
    claims: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    producers: dict[int, list[str]] = field(default_factory=dict)
    vals: dict[fx.Node, Val | None] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)

    def shape(self, node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def val(self, a: Any) -> Val | None:
        return self.vals.get(a) if isinstance(a, fx.Node) else None

    def ins(self, node: fx.Node) -> list[Val]:
        """The values of the node's traced tensor arguments, positional then keyword, also those inside
        lists and tuples (``torch.cat([a, b])``)."""
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), found.append)
        return [v for v in map(self.val, found) if v is not None]

    def single(self, node: fx.Node) -> Val:
        """The value of the node's one tensor input (refused if it has several)."""
        ins = self.ins(node)
        if len(ins) > 1:
            raise self.fail(node, "an elementwise function with several tensor inputs")
        return ins[0]

    def passed(self, node: fx.Node, v: Val) -> Val:
        """``node``'s output carries ``v``'s permutation and layout."""
        return Val(v.group, v.block, self.shape(node))

    def claim(self, tensor: str, axis: int, group: int, block: int, where: str) -> None:
        """Record that axis ``axis`` of parameter/buffer ``tensor`` is indexed by ``group`` (tied if seen)."""
        if tensor not in self.tensors:
            return
        old_g, old_b = self.claims.setdefault((tensor, axis), (group, block))
        if old_b != block:
            raise UserError(f"{where}: axis {axis} of '{tensor}' is used with two block sizes")
        self.groups.union(old_g, group, where)

    def fail(self, node: fx.Node, why: str) -> UserError:
        target = target_name(node, str(node.target))
        return UserError(f"cannot infer the permutation spec at fx node '{node.name}' ({node.op} {target}): {why}. "
                         f"Pass elementwise=['{target}'] if it acts on each channel separately, or write the "
                         f"spec by hand (PermutationSpec.from_dict / --spec FILE.json)")

    def channel_in(self, node: fx.Node, v: Val, n_in: int, what: str) -> tuple[int, int]:
        """(group, block) feeding a layer that reads ``n_in`` input features on axis 1."""
        if v.group == 0:
            return 0, 1
        size = self.groups.size[self.groups.find(v.group)]
        if size is None or n_in % size != 0:
            raise self.fail(node, f"{what} reads {n_in} features but its input carries {size} permuted units")
        return v.group, n_in // size


Rule = Callable[[InferContext, fx.Node], "Val | None"]


# -- the rules -------------------------------------------------------------------------------------

def rule_linear(ctx: InferContext, node: fx.Node) -> Val:
    """Linear / Conv: the input axis joins the input's permutation; the output starts a new one."""
    mod, name = ctx.modules[node.target], node.target
    first = ctx.val(node.args[0])
    is_linear = isinstance(mod, nn.Linear)
    if is_linear and first.shape is not None and len(first.shape) != 2 and first.group != 0:
        raise ctx.fail(node, "a Linear applied to a tensor of rank != 2 with permuted channels")
    if not is_linear and mod.groups != 1:
        raise ctx.fail(node, "a grouped convolution")
    n_out = mod.out_features if is_linear else mod.out_channels
    n_in = mod.in_features if is_linear else mod.in_channels
    g_in, b_in = ctx.channel_in(node, first, n_in, type(mod).__name__)
    ctx.claim(f"{name}.weight", 1, g_in, b_in, name)
    g = ctx.groups.new(n_out, name)
    ctx.producers.setdefault(g, []).append(name)
    ctx.claim(f"{name}.weight", 0, g, 1, name)
    ctx.claim(f"{name}.bias", 0, g, 1, name)
    ctx.kinds[node.name] = "linear"
    return Val(g, 1, ctx.shape(node))


def rule_norm(ctx: InferContext, node: fx.Node) -> Val:
    """BatchNorm / InstanceNorm, LayerNorm over all non-batch axes, GroupNorm with 1 or C groups."""
    mod, name = ctx.modules[node.target], node.target
    first = ctx.val(node.args[0])
    if isinstance(mod, nn.GroupNorm):
        if mod.num_groups not in (1, mod.num_channels) and first.group != 0:
            raise ctx.fail(node, f"a GroupNorm with {mod.num_groups} groups of {mod.num_channels} channels "
                                 f"only allows permutations inside groups")
        n_ch = mod.num_channels
    elif isinstance(mod, nn.LayerNorm):
        ns = tuple(mod.normalized_shape)
        if first.shape is not None and len(first.shape) - 1 != len(ns) and first.group != 0:
            raise ctx.fail(node, "a LayerNorm that does not normalise over all non-batch axes")
        n_ch = ns[0]
    else:
        n_ch = mod.num_features
    g_in, b_in = ctx.channel_in(node, first, n_ch, type(mod).__name__)
    for suffix in ("weight", "bias", "running_mean", "running_var"):
        ctx.claim(f"{name}.{suffix}", 0, g_in, b_in, name)
    ctx.kinds[node.name] = "norm"
    return ctx.passed(node, first)


def rule_activation(ctx: InferContext, node: fx.Node) -> Val:
    """A channel-wise nonlinearity (also every name in ``elementwise=``): passes, recorded as ``act``."""
    v = ctx.single(node)
    ctx.kinds[node.name] = "act"
    return ctx.passed(node, v)


def rule_prelu(ctx: InferContext, node: fx.Node) -> Val:
    """PReLU: an activation whose per-channel slopes (if more than one) follow the permutation."""
    mod, v = ctx.modules[node.target], ctx.single(node)
    if mod.num_parameters > 1:
        g_in, b_in = ctx.channel_in(node, v, mod.num_parameters, type(mod).__name__)
        ctx.claim(f"{node.target}.weight", 0, g_in, b_in, node.target)
    ctx.kinds[node.name] = "act"
    return ctx.passed(node, v)


def rule_passthrough(ctx: InferContext, node: fx.Node) -> Val:
    """Pooling, dropout, identity, copies: pass the permutation on, not an activation to match."""
    return ctx.passed(node, ctx.single(node))


def rule_scale(ctx: InferContext, node: fx.Node) -> Val | None:
    """``x / c``, ``-x`` with one tensor input pass it on; with two tensors they are `rule_fixed`."""
    ins = ctx.ins(node)
    if len(ins) != 1:
        return rule_fixed(ctx, node)
    return ctx.passed(node, ins[0])


def rule_tie(ctx: InferContext, node: fx.Node) -> Val:
    """``a + b``, ``a - b``, ``a * b``: the inputs (of rank > 1) share one permutation."""
    ranked = [v for v in ctx.ins(node) if v.shape is None or len(v.shape) > 1]
    g = ranked[0].group if ranked else 0
    for v in ranked[1:]:
        if v.block != ranked[0].block:
            raise ctx.fail(node, "adds tensors with different channel layouts")
        g = ctx.groups.union(g, v.group, f"'{node.name}'")
    ctx.kinds[node.name] = "tie"
    return Val(g, ranked[0].block if ranked else 1, ctx.shape(node))


def rule_flatten(ctx: InferContext, node: fx.Node) -> Val:
    """Flattening from axis 1 on folds the spatial axes into each channel's block."""
    if node.op == "call_module":
        start_dim = ctx.modules[node.target].start_dim
    elif target_name(node) == "flatten":
        start_dim = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    else:  # view / reshape
        start_dim = 1
    v, shape = ctx.ins(node)[0], ctx.shape(node)
    if v.group == 0:
        return Val(0, 1, shape)
    in_shape = v.shape
    if in_shape is None or shape is None:
        raise ctx.fail(node, "a reshape of an unknown shape")
    start = start_dim % len(in_shape)
    if start >= 2:
        return Val(v.group, v.block, shape)
    if start == 1 and len(shape) == 2 and shape[0] == in_shape[0] and shape[1] == math.prod(in_shape[1:]):
        return Val(v.group, v.block * math.prod(in_shape[2:]), shape)
    raise ctx.fail(node, f"a reshape from {list(in_shape)} to {list(shape)} that moves the channel axis")


def rule_reduce(ctx: InferContext, node: fx.Node) -> Val | None:
    """``mean`` / ``amax`` / ``sum`` over non-channel axes pass the permutation on (global pooling)."""
    v = ctx.ins(node)[0]
    if v.group == 0:
        return rule_fixed(ctx, node)
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    rank = len(v.shape) if v.shape is not None else 4
    dims = [d % rank for d in dims]
    if not dims or 0 in dims or 1 in dims:
        raise ctx.fail(node, "a reduction over the channel axis")
    return ctx.passed(node, v)


def rule_size(ctx: InferContext, node: fx.Node) -> None:
    """``x.size()``, ``x.dim()``, ``x.shape``: Python values, not tensors."""
    return None


def rule_constant(ctx: InferContext, node: fx.Node) -> Val | None:
    """A call without traced tensor inputs (arithmetic on sizes, a new tensor): fixed or not a tensor."""
    shape = ctx.shape(node)
    return None if shape is None else Val(0, 1, shape)


def rule_fixed(ctx: InferContext, node: fx.Node) -> Val:
    """The fallback: unknown ops are allowed only on fixed (never permuted) values, else refused."""
    if node.op == "call_module":
        mod = ctx.modules[node.target]
        if not list(mod.parameters()) and ctx.val(node.args[0]).group == 0:
            return Val(0, 1, ctx.shape(node))
        raise ctx.fail(node, f"module type {type(mod).__name__} is not known to act channel-wise")
    if all(v.group == 0 for v in ctx.ins(node)):
        return Val(0, 1, ctx.shape(node))
    raise ctx.fail(node, "an operation not known to act channel-wise")


# -- the tables ------------------------------------------------------------------------------------

MODULE_RULES: dict[type, Rule] = {
    **dict.fromkeys((nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d), rule_linear),
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.LazyBatchNorm1d,
                     nn.LazyBatchNorm2d, nn.LazyBatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
                     nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d, nn.GroupNorm, nn.LayerNorm),
                    rule_norm),
    **dict.fromkeys((nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Mish,
                     nn.Hardtanh, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid), rule_activation),
    nn.PReLU: rule_prelu,
    **dict.fromkeys((nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                     nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d),
                    rule_passthrough),
    nn.Flatten: rule_flatten,
}
"""Module class -> rule; a module's rule is that of the first class of its MRO listed here."""

FUNCTION_RULES: dict[str, Rule] = {
    **dict.fromkeys(("relu", "tanh", "gelu", "silu", "sigmoid", "leaky_relu", "elu", "softplus", "relu6", "hardtanh",
                     "mish"), rule_activation),
    **dict.fromkeys(("dropout", "max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
                     "adaptive_avg_pool2d", "adaptive_max_pool2d", "contiguous", "clone", "detach"), rule_passthrough),
    **dict.fromkeys(("truediv", "div", "neg"), rule_scale),
    **dict.fromkeys(("add", "sub", "mul", "iadd", "isub", "imul"), rule_tie),
    **dict.fromkeys(("flatten", "view", "reshape"), rule_flatten),
    **dict.fromkeys(("mean", "amax", "sum"), rule_reduce),
    **dict.fromkeys(("getattr", "size", "dim"), rule_size),
}
"""Function or method name (``node.target.__name__`` or the method's name) -> rule."""


def module_rule(ctx: InferContext, node: fx.Node) -> Rule:
    """The rule for a ``call_module`` node: by class, else `rule_activation` if named in
    ``elementwise=``, else `rule_fixed`."""
    mod = ctx.modules[node.target]
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
        xs = [_input_of(data[i]) for i in range(min(n, len(data)))]
        x = torch.stack(xs) if xs and all(isinstance(v, Tensor) for v in xs) else (xs[0] if xs else None)
    elif hasattr(data, "__iter__") and not isinstance(data, dict):
        x = _input_of(next(iter(data), None))
        x = x[:n] if isinstance(x, Tensor) else x
    else:
        raise UserError(f"example_input: data must be (X, y) tensors, a Dataset, a DataLoader, an iterable of "
                        f"(x, y) batches, a dict of those or a split with .train; got {type(data).__name__}")
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
        raise UserError("infer_spec needs the shape of one input: pass input_shape=(C, H, W) or (features,), "
                        "example=a batch of inputs, or data=the training data ((X, y), a Dataset or a DataLoader)")
    return torch.zeros((2, *[int(s) for s in input_shape]), dtype=dtype, device=device)


def _trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many exception types for untraceable code
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise UserError(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {first_line}. "
            "Write its permutation spec by hand (PermutationSpec.from_dict, or --spec FILE.json in the shape "
            "printed by `modescape spec --json` for a traceable model)") from None


# -- the walk --------------------------------------------------------------------------------------

def _collect(ctx: InferContext, order: list[str]) -> PermutationSpec:
    """Every claimed axis whose group is not tied to the fixed input/output, one permutation per root."""
    groups = ctx.groups
    roots: dict[int, list[Axis]] = {}
    for (tensor, axis), (g, block) in ctx.claims.items():
        r = groups.find(g)
        if r != groups.find(0):
            roots.setdefault(r, []).append(Axis(tensor, axis, block))
    node_groups: dict[int, list[tuple[str, str]]] = {}
    for node, v in ctx.vals.items():
        if v is not None and v.group != 0 and v.block == 1 and v.shape is not None and len(v.shape) >= 2:
            node_groups.setdefault(groups.find(v.group), []).append((node.name, ctx.kinds.get(node.name, "other")))
    sizes, axes, prods, nodes = {}, {}, {}, {}
    for r in sorted(roots):
        pname = groups.origin[r]
        sizes[pname] = int(groups.size[r])
        axes[pname] = sorted(roots[r], key=lambda a: (order.index(a.name), a.axis))
        prods[pname] = [m for g, ms in ctx.producers.items() if groups.find(g) == r for m in ms]
        nodes[pname] = node_groups.get(r, [])
    return PermutationSpec(sizes, axes, prods, nodes)


def infer_spec(model: nn.Module, input_shape: Sequence[int] | None = None, example: Tensor | None = None,
               elementwise: Iterable[str] = (), data: Any = None) -> PermutationSpec:
    """Infer the permutation spec of ``model`` from its ``torch.fx`` graph (model not modified).

    The input that teaches every node's shape: ``example`` (a batch), else ``input_shape`` (one
    sample's shape), else ``model.modescape_spec["input_shape"]`` (zoo models), else the first
    inputs of ``data`` (any form `example_input` takes).
    ``elementwise``: names of extra module classes or functions that act on each channel separately
    (custom activations), passed through like ReLU.
    Raises `UserError` naming the node it cannot handle.
    """
    work = copy.deepcopy(model).eval()
    gm = _trace(work)
    x = _input_for(model, input_shape, example, data)
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(x)
    except Exception as e:
        raise UserError(f"running {type(model).__name__} on an input of shape {list(x.shape)} failed ({e}); "
                        "pass the right input_shape") from None
    order = [n for n, _ in work.named_parameters()] + [n for n, _ in work.named_buffers()]
    ctx = InferContext(Groups(), dict(gm.named_modules()), set(order), frozenset(elementwise))
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            ctx.vals[node] = Val(0, 1, ctx.shape(node))
        elif node.op == "get_attr":
            raise ctx.fail(node, "a parameter used outside its module (functional layer)")
        elif node.op == "output":
            outs: list[fx.Node] = []
            fx.node.map_arg(node.args[0], outs.append)  # every node in the (nested) output: never permuted
            for v in filter(None, map(ctx.val, outs)):
                ctx.groups.union(v.group, 0, f"output '{node.name}'")
        elif node.op == "call_module":
            if not node.args or ctx.val(node.args[0]) is None:
                raise ctx.fail(node, "its first argument is not a traced tensor")
            if len(ctx.ins(node)) > 1:
                raise ctx.fail(node, "a module with several tensor inputs")
            ctx.vals[node] = module_rule(ctx, node)(ctx, node)
        else:  # call_function / call_method
            ctx.vals[node] = function_rule(ctx, node)(ctx, node)
    return _collect(ctx, order)


__all__ = ["FUNCTION_RULES", "MODULE_RULES", "Groups", "InferContext", "Rule", "Val", "example_input", "infer_spec"]
