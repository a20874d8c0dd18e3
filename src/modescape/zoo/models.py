"""Model zoo: small, plain PyTorch architectures for loss-landscape experiments.

Every model is built from standard layers (Sequential, Linear, Conv2d, Embedding, norms, ReLU, GELU,
pooling) plus a simple residual `BasicBlock` and, for the transformer, a `SelfAttention` written with
plain tensor operations (no ``nn.MultiheadAttention``), with no in-place ops and no dropout, so it can be traced by
`torch.fx`, called through `torch.func.functional_call` and batched over parameter sets with
`torch.func.vmap`. `build_model` attaches a JSON-able `modescape_spec` to the module so that a
saved checkpoint can be rebuilt from its spec alone.

Builder arguments may arrive as strings from the command line ("3", "true", "bn"); they are
coerced to the type declared on the builder's signature, and unknown or invalid ones raise a
`UserError`.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from modescape.errors import UserError

__all__ = [
    "BasicBlock",
    "SelfAttention",
    "Transformer",
    "TransformerBlock",
    "build_model",
    "coerce_args",
    "model_names",
]


# ----------------------------------------------------------------------------------------------
# Argument coercion (shared with the dataset loaders)
# ----------------------------------------------------------------------------------------------

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
_NONE = {"none", "null", ""}


def coerce_args(what: str, fn: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """Check `args` against the keyword-only parameters of `fn` and coerce them to their types.

    `what` names the thing being configured (e.g. "model 'mlp'") for error messages. Keys may use
    dashes instead of underscores. Returns a new dict holding only the given arguments.
    """
    params = {p.name: p for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    hints = typing.get_type_hints(fn)
    out: dict[str, Any] = {}
    for raw_key, value in args.items():
        key = str(raw_key).replace("-", "_")
        if key not in params:
            valid = ", ".join(params) or "(none)"
            raise UserError(f"unknown argument {raw_key!r} for {what}; valid arguments: {valid}")
        out[key] = _coerce_value(value, hints[key], f"argument {key!r} of {what}")
    return out


def _coerce_value(value: Any, hint: Any, label: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return _coerce_value(value, inner, label)
    if origin is Literal:
        return _coerce_choice(value, typing.get_args(hint), label)
    if hint is bool:
        return _coerce_bool(value, label)
    if hint is int:
        return _coerce_int(value, label)
    if hint is float:
        return _coerce_float(value, label)
    if hint is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{label} must be a string, got {value!r}")
    raise TypeError(f"unsupported annotation {hint!r} for {label}")  # a bug in a builder


def _coerce_choice(value: Any, choices: tuple[Any, ...], label: str) -> Any:
    text = value.strip().lower() if isinstance(value, str) else None
    for choice in choices:
        if isinstance(value, bool) != isinstance(choice, bool):
            continue
        if value == choice or (text is not None and text == str(choice).lower()):
            return choice
    listed = ", ".join(repr(c) for c in choices)
    raise UserError(f"{label} must be one of {listed}, got {value!r}")


def _coerce_bool(value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise UserError(f"{label} must be true or false, got {value!r}")


def _coerce_int(value: Any, label: str) -> int:
    if isinstance(value, bool):
        raise UserError(f"{label} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise UserError(f"{label} must be an integer, got {value!r}")


def _coerce_float(value: Any, label: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise UserError(f"{label} must be a number, got {value!r}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

Norm = Literal["none", "bn", "ln"]


def _norm1d(norm: str, features: int) -> nn.Module:
    if norm == "bn":
        return nn.BatchNorm1d(features)
    if norm == "ln":
        return nn.LayerNorm(features)
    return nn.Identity()


def _norm2d(norm: str, channels: int) -> nn.Module:
    """Norm for conv nets; "ln" is layer norm over (C, H, W), i.e. GroupNorm with one group."""
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "ln":
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def _conv3x3(c_in: int, c_out: int, stride: int, norm: str) -> nn.Conv2d:
    # A bias right before a norm layer is redundant (the norm has its own shift), so drop it.
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm == "none")


class BasicBlock(nn.Module):
    """Residual block of He et al. (2016): conv3x3-norm-relu-conv3x3-norm, plus shortcut, relu.

    The shortcut is the identity when the shape is unchanged and a conv1x1 + norm projection
    otherwise; with `skip=False` there is no shortcut at all (a plain two-layer conv block).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, skip: bool) -> None:
        super().__init__()
        self.conv1 = _conv3x3(c_in, c_out, stride, norm)
        self.norm1 = _norm2d(norm, c_out)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = _conv3x3(c_out, c_out, 1, norm)
        self.norm2 = _norm2d(norm, c_out)
        self.relu2 = nn.ReLU(inplace=False)
        self.shortcut: nn.Module | None
        if not skip:
            self.shortcut = None
        elif stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=norm == "none"),
                _norm2d(norm, c_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu2(out)


def _require_image(model: str, input_shape: tuple[int, ...]) -> None:
    _require(
        len(input_shape) == 3,
        f"model {model!r} needs image inputs of shape (C, H, W), got {input_shape}; use 'mlp' for vector data",
    )


def _head(channels: int, num_classes: int) -> list[tuple[str, nn.Module]]:
    return [
        ("pool", nn.AdaptiveAvgPool2d(1)),
        ("flatten", nn.Flatten()),
        ("fc", nn.Linear(channels, num_classes)),
    ]


# ----------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------


def _mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 2,
    width: int = 64,
    norm: Norm = "none",
    activation: Literal["relu", "tanh"] = "relu",
) -> nn.Module:
    """Flatten, `depth` hidden layers Linear -> [norm] -> act, then Linear to the classes."""
    _require(depth >= 0, f"mlp depth must be >= 0, got {depth}")
    _require(width >= 1, f"mlp width must be >= 1, got {width}")
    layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
    features = math.prod(input_shape)
    for i in range(depth):
        layers.append((f"fc{i}", nn.Linear(features, width, bias=norm == "none")))
        if norm != "none":
            layers.append((f"norm{i}", _norm1d(norm, width)))
        act = nn.ReLU(inplace=False) if activation == "relu" else nn.Tanh()
        layers.append((f"act{i}", act))
        features = width
    layers.append(("out", nn.Linear(features, num_classes)))
    return nn.Sequential(OrderedDict(layers))


def _cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    width: int = 16,
    norm: Norm = "bn",
) -> nn.Module:
    """Three conv3x3 blocks (w, 2w, 4w channels; strides 1, 2, 2), global average pool, linear."""
    _require_image("cnn", input_shape)
    _require(width >= 1, f"cnn width must be >= 1, got {width}")
    layers: list[tuple[str, nn.Module]] = []
    c_in = input_shape[0]
    for i, (c_out, stride) in enumerate([(width, 1), (2 * width, 2), (4 * width, 2)]):
        layers.append((f"conv{i}", _conv3x3(c_in, c_out, stride, norm)))
        if norm != "none":
            layers.append((f"norm{i}", _norm2d(norm, c_out)))
        layers.append((f"relu{i}", nn.ReLU(inplace=False)))
        c_in = c_out
    return nn.Sequential(OrderedDict(layers + _head(c_in, num_classes)))


def _resnet(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: int = 20,
    width: int = 1,
    skip: bool = True,
    norm: Norm = "bn",
) -> nn.Module:
    """CIFAR-style ResNet: stem conv, 3 stages of (depth-2)/6 BasicBlocks (16w, 32w, 64w)."""
    _require_image("resnet", input_shape)
    _require(
        depth >= 8 and (depth - 2) % 6 == 0,
        f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}",
    )
    _require(width >= 1, f"resnet width must be >= 1, got {width}")
    blocks_per_stage = (depth - 2) // 6
    c = 16 * width
    layers: list[tuple[str, nn.Module]] = [("conv", _conv3x3(input_shape[0], c, 1, norm))]
    if norm != "none":
        layers.append(("norm", _norm2d(norm, c)))
    layers.append(("relu", nn.ReLU(inplace=False)))
    c_in = c
    for stage, c_out in enumerate([c, 2 * c, 4 * c], start=1):
        blocks = []
        for b in range(blocks_per_stage):
            stride = 2 if stage > 1 and b == 0 else 1
            blocks.append(BasicBlock(c_in, c_out, stride, norm, skip))
            c_in = c_out
        layers.append((f"stage{stage}", nn.Sequential(*blocks)))
    return nn.Sequential(OrderedDict(layers + _head(c_in, num_classes)))


_VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],  # fmt: skip
}


def _vgg(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    depth: Literal[11, 13, 16, 19] = 11,
    width: int = 1,
    bn: bool = True,
) -> nn.Module:
    """VGG (Simonyan & Zisserman 2015) with channels c * width / 8 (width=8 is the classic net).

    Max pooling is skipped once the feature map is 1x1, so the net also runs on 8x8 inputs; the
    classifier is global average pooling and one linear layer (no dropout).
    """
    _require_image("vgg", input_shape)
    _require(width >= 1, f"vgg width must be >= 1, got {width}")
    layers: list[tuple[str, nn.Module]] = []
    c_in, height, width_px = input_shape
    n_conv = n_pool = 0
    for item in _VGG_CONFIGS[depth]:
        if item == "M":
            if min(height, width_px) > 1:
                layers.append((f"pool{n_pool}", nn.MaxPool2d(2)))
                height, width_px = height // 2, width_px // 2
                n_pool += 1
            continue
        c_out = max(4, round(int(item) * width / 8))
        layers.append((f"conv{n_conv}", nn.Conv2d(c_in, c_out, 3, padding=1, bias=not bn)))
        if bn:
            layers.append((f"norm{n_conv}", nn.BatchNorm2d(c_out)))
        layers.append((f"relu{n_conv}", nn.ReLU(inplace=False)))
        c_in = c_out
        n_conv += 1
    return nn.Sequential(OrderedDict(layers + _head(c_in, num_classes)))


# ----------------------------------------------------------------------------------------------
# Transformer (decoder-only, pre-LayerNorm), written with plain modules for torch.fx and torch.func
# ----------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with its own Linear projections ``q``, ``k``, ``v`` (d -> d) and ``o``.

    Head h owns rows ``h * head_dim : (h + 1) * head_dim`` of q, k and v and the same columns of o.
    Scores are ``q_h k_h^T / sqrt(head_dim)``, causally masked when ``causal``; no dropout. Everything
    is a plain tensor operation, so the module runs under ``torch.func`` (vmap, jvp, double backward)
    and ``torch.fx`` traces it; `modescape.symmetry.infer` treats it as one node with its own rule
    (heads, and the within-head permutations of q/k and of v/o).
    """

    def __init__(self, width: int, heads: int, causal: bool = True, bias: bool = True) -> None:
        super().__init__()
        if width % heads:
            raise UserError(f"transformer width ({width}) must be a multiple of heads ({heads})")
        self.heads, self.head_dim, self.causal = heads, width // heads, causal
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.q = nn.Linear(width, width, bias=bias)
        self.k = nn.Linear(width, width, bias=bias)
        self.v = nn.Linear(width, width, bias=bias)
        self.o = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, C] -> [B, T, C]
        b, t, c = x.shape
        shape = (b, t, self.heads, self.head_dim)
        q = self.q(x).view(shape).transpose(1, 2)  # [B, H, T, D]
        k = self.k(x).view(shape).transpose(1, 2)
        v = self.v(x).view(shape).transpose(1, 2)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # [B, H, T, T]
        if self.causal:
            keep = torch.ones_like(scores[0, 0], dtype=torch.bool).tril()  # [T, T]; traceable by fx
            scores = scores.masked_fill(~keep, float("-inf"))
        y = scores.softmax(-1) @ v  # [B, H, T, D]
        return self.o(y.transpose(1, 2).reshape(b, t, c))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` (mlp: fc, GELU, proj)."""

    def __init__(self, width: int, heads: int, mlp_width: int, causal: bool = True) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("fc", nn.Linear(width, mlp_width)), ("act", nn.GELU()), ("proj", nn.Linear(mlp_width, width))]
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """Decoder-only transformer on token ids [B, T] (int64): token + learned position embeddings,
    ``layers`` pre-LayerNorm blocks, a final LayerNorm and a linear head (tied to the token embedding
    when ``tied``). ``output="last"``: logits of the last position [B, V] (a sequence classified by its
    last token, as modular arithmetic); ``"all"``: every position [B, T, V] (a language model)."""

    def __init__(
        self,
        vocab: int,
        classes: int,
        length: int,
        width: int,
        layers: int,
        heads: int,
        mlp_width: int,
        tied: bool,
        output: str,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.output = output
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(length, width)
        self.blocks = nn.Sequential(*[TransformerBlock(width, heads, mlp_width, causal) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes, bias=False)
        if tied:
            self.head.weight = self.tok.weight
        with torch.no_grad():  # GPT-2's initialisation: N(0, 0.02) embeddings and projections
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    m.weight.normal_(0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    m.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.blocks(self.tok(x) + self.pos(positions))
        h = self.ln_f(h)
        if self.output == "last":
            h = h[:, -1]
        return self.head(h)


def _transformer(
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    layers: int = 1,
    width: int = 128,
    heads: int = 4,
    mlp_ratio: int = 4,
    tied: bool = False,
    output: Literal["last", "all"] = "last",
    vocab: int | None = None,
    max_len: int | None = None,
    causal: bool = True,
) -> nn.Module:
    """Decoder-only pre-LN transformer for token sequences of ``input_shape = (T,)``.

    ``vocab``: the number of token ids (default ``num_classes``: the tasks here predict tokens of the
    same vocabulary); ``tied``: the head shares the token embedding (needs vocab == num_classes);
    ``max_len``: positions (default T); ``output``: ``last`` or ``all`` (see `Transformer`).
    """
    _require(len(input_shape) == 1, f"transformer needs token sequences of shape (T,), got {input_shape}")
    _require(layers >= 1, f"transformer layers must be >= 1, got {layers}")
    _require(width >= 1 and heads >= 1, f"transformer width and heads must be >= 1, got {width}, {heads}")
    _require(width % heads == 0, f"transformer width ({width}) must be a multiple of heads ({heads})")
    _require(mlp_ratio >= 1, f"transformer mlp_ratio must be >= 1, got {mlp_ratio}")
    vocab = num_classes if vocab is None else vocab
    _require(vocab >= 1, f"transformer vocab must be >= 1, got {vocab}")
    _require(
        not tied or vocab == num_classes,
        f"a tied head needs vocab == num_classes, got vocab {vocab} and {num_classes} classes",
    )
    length = input_shape[0] if max_len is None else max_len
    _require(
        length >= input_shape[0], f"transformer max_len ({length}) is shorter than the sequences ({input_shape[0]})"
    )
    return Transformer(vocab, num_classes, length, width, layers, heads, mlp_ratio * width, tied, output, causal)


_MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": _mlp,
    "cnn": _cnn,
    "resnet": _resnet,
    "vgg": _vgg,
    "transformer": _transformer,
}


def model_names() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_MODELS)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **args: Any) -> nn.Module:
    """Build zoo model `name` for inputs of `input_shape` (one sample) and `num_classes` outputs.

    Initialisation uses torch's global RNG, so call `torch.manual_seed` first for a reproducible
    model. The returned module carries `modescape_spec` (name, args, input_shape, num_classes),
    from which `build_model(**spec)`-style rebuilding gives the same architecture.
    """
    if name not in _MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    builder = _MODELS[name]
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    _require(
        len(shape) >= 1 and all(d >= 1 for d in shape),
        f"input_shape must be non-empty with positive sizes, got {input_shape!r}",
    )
    classes = _coerce_int(num_classes, "num_classes")
    _require(classes >= 1, f"num_classes must be >= 1, got {num_classes!r}")
    clean = coerce_args(f"model {name!r}", builder, args)
    model = builder(shape, classes, **clean)
    model.modescape_spec = {  # type: ignore[assignment]  # a plain attribute; torch types them Tensor | Module
        "name": name,
        "args": clean,
        "input_shape": list(shape),
        "num_classes": classes,
    }
    return model
