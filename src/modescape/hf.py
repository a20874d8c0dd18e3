"""Hugging Face models built from a config, as plain modules every modescape method can use.

``transformers`` is an optional dependency (``pip install modescape[hf]``); nothing is ever downloaded:
a model is built from a config class (``GPT2Config``, ``BertConfig``) at a small size, randomly
initialised with torch's global RNG (call ``torch.manual_seed`` first), and trained here on the built-in
sequence tasks (``modular-add``, ``char-lm``).

The adapter, `HFModel`, makes a Hugging Face model look like every other model of the package:

* **inputs**: token ids ``[B, T]`` (int64) go in as ``input_ids``; no attention mask (every sequence of
  the built-in tasks is full length), no labels;
* **outputs**: the ``ModelOutput``'s ``logits`` come out as a tensor: those of the last position
  ``[B, V]`` (``output="last"``: a sequence classified by its last token, as in modular arithmetic) or
  of every position ``[B, T, V]`` (``output="all"``: a language model);
* **loss**: the Evaluator's per-sample cross-entropy of those logits against the task's labels, which
  are already the next tokens (``char-lm``'s targets are its inputs shifted by one), so Hugging Face's
  own label shifting and ``labels=`` are never used;
* **dropout off** by default (``*_pdrop`` / ``*_dropout_prob`` = 0), so a point of weight space is one
  function; the attention is the ``eager`` implementation, whose double backward, forward-mode
  derivatives and ``vmap`` the Hessian, the GGN and vectorised evaluation need.

Families (`FAMILIES`): ``gpt2`` (``GPT2LMHeadModel``: causal, learned positions, fused q/k/v in one
``Conv1D``, head tied to the token embedding) and ``bert`` (``BertForMaskedLM``: bidirectional; the
prediction is the masked-LM head's output at each position). On the command line:

    modescape train --model hf:gpt2 --model-args n_layer=2,n_embd=64,n_head=4 --data modular-add ...

``--model-args`` are config fields (strings are converted to the type of the config's default), plus
``output=last|all``. The built model carries ``modescape_spec`` (``name="hf:gpt2"``, the arguments, the
input shape and the number of classes), so checkpoints rebuild it from their sidecar.

Permutation symmetry: fx cannot trace these models as they are written (dynamic control flow), so the
GPT-2 family has a spec written once from its config (`gpt2_spec`); `HFModel.permutation_spec` returns
it and `modescape.symmetry.infer_spec` uses a model's own ``permutation_spec()`` when it has one, so
weight matching and the alignment barrier work on GPT-2 models as on zoo models. The rules are those of
the zoo transformer (docs/transformers.md): one residual permutation for the token and position
embeddings, every LayerNorm, every block's input projections' rows and output projections' columns and
the tied head; per block the MLP's hidden units, the heads, and the units inside each head of the
queries and keys (``:qk``) and of the values and the output projection (``:vo``). GPT-2's ``Conv1D``
stores weights as ``[in, out]``, so its axes are the transposes of a Linear's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import UserError

OUTPUTS = ("last", "all")


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("Hugging Face models need the transformers package: pip install 'modescape[hf]'") from None
    return transformers


def _gpt2(t, vocab: int, length: int):
    cls = t.GPT2Config
    defaults = dict(
        vocab_size=vocab,
        n_positions=length,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return cls, defaults, t.GPT2LMHeadModel


def _bert(t, vocab: int, length: int):
    cls = t.BertConfig
    defaults = dict(
        vocab_size=vocab,
        max_position_embeddings=length,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        type_vocab_size=1,
        pad_token_id=None,
    )
    return cls, defaults, t.BertForMaskedLM


FAMILIES = {"gpt2": _gpt2, "bert": _bert}
"""Family name -> (config class, default config for a vocabulary and a length, model class)."""


class HFModel(nn.Module):
    """A Hugging Face model as a plain module: ``forward(input_ids [B, T]) -> logits`` ([B, V] of the last
    position for ``output="last"``, [B, T, V] for ``"all"``); the wrapped model is ``self.model``."""

    def __init__(self, model: nn.Module, output: str = "last", family: str | None = None) -> None:
        super().__init__()
        if output not in OUTPUTS:
            raise UserError(f"unknown output '{output}': use last (the last position's logits) or all")
        self.model = model
        self.output = output
        self.family = family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=x)
        logits = out.logits if hasattr(out, "logits") else out[0]  # a ModelOutput, or a plain tuple
        return logits[:, -1] if self.output == "last" else logits

    def permutation_spec(self):
        """The model's `PermutationSpec` (GPT-2 family; `gpt2_spec`)."""
        if self.family != "gpt2":
            raise UserError(
                f"no permutation spec is written for Hugging Face family '{self.family}': alignment "
                "supports the GPT-2 family (hf:gpt2); write a spec by hand (--spec FILE.json)"
            )
        return gpt2_spec(self.model.config, prefix="model.")


def _coerce(key: str, value: Any, default: Any, family: str) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise UserError(
            f"argument {key!r} of model 'hf:{family}' must be a {type(default).__name__}, got {value!r}"
        ) from None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def build(family: str, input_shape: Sequence[int], num_classes: int, **args: Any) -> HFModel:
    """A randomly initialised Hugging Face model of ``family`` (`FAMILIES`) for token sequences of
    ``input_shape = (T,)`` and ``num_classes`` token ids, wrapped in `HFModel`.

    ``args``: config fields (overriding the small defaults: 2 layers, width 64, 4 heads, no dropout;
    vocabulary = ``num_classes``, positions = T) and ``output`` (``last`` or ``all``). Values may be
    strings, as from ``--model-args``. Never downloads anything.
    """
    if family not in FAMILIES:
        raise UserError(f"unknown Hugging Face family '{family}': use one of {', '.join(f'hf:{f}' for f in FAMILIES)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 1:
        raise UserError(
            f"hf:{family} needs token sequences of shape (T,), got {tuple(input_shape)}: use a sequence "
            "task (--data modular-add or char-lm)"
        )
    t = _transformers()
    config_cls, defaults, model_cls = FAMILIES[family](t, int(num_classes), shape[0])
    args = {str(k).replace("-", "_"): v for k, v in args.items()}
    output = str(args.pop("output", "last"))
    reference = config_cls()
    fields = {**defaults}
    for key, value in args.items():
        if not hasattr(reference, key):
            raise UserError(
                f"unknown argument {key!r} for model 'hf:{family}': give fields of "
                f"transformers.{config_cls.__name__} (e.g. {', '.join(list(defaults)[:5])}) or output"
            )
        fields[key] = _coerce(key, value, getattr(reference, key), family)
    config = config_cls(**fields)
    config._attn_implementation = "eager"  # double backward, forward-mode AD and vmap (see module doc)
    model = HFModel(model_cls(config), output, family)
    spec = {
        "name": f"hf:{family}",
        "args": {**{k: fields[k] for k in args}, "output": output},
        "input_shape": list(shape),
        "num_classes": int(num_classes),
    }
    model.modescape_spec = spec  # type: ignore[assignment]  # a plain attribute; torch types them Tensor | Module
    return model


def gpt2_spec(config: Any, prefix: str = ""):
    """The `PermutationSpec` of a GPT-2 model (``GPT2LMHeadModel``) with this config, tensor names under
    ``prefix`` (``"model."`` inside `HFModel`). ``Conv1D`` weights are ``[in, out]``; ``c_attn`` holds
    the queries, keys and values side by side on its output axis (offsets 0, d and 2d)."""
    from .symmetry.spec import Axis, PermutationSpec

    d, n_heads, n_layer = config.n_embd, config.n_head, config.n_layer
    head_dim = d // n_heads
    mlp_width = config.n_inner if getattr(config, "n_inner", None) else 4 * d
    t, h = f"{prefix}transformer.", f"{prefix}transformer.h."
    stream = [Axis(f"{t}wte.weight", 1), Axis(f"{t}wpe.weight", 1)]
    sizes: dict[str, int] = {"residual": d}
    axes: dict[str, list[Axis]] = {}
    producers: dict[str, list[str]] = {"residual": [f"{t}wte"]}

    def head_axes(key: str, inner: str, name: str, axis: int, offset: int = 0) -> None:
        """Heads as wholes (blocks of head_dim) and the units inside every head (``inner``: qk or vo)."""
        if n_heads > 1:
            axes[f"{key}:heads"].append(Axis(name, axis, head_dim, 1, offset))
        if head_dim > 1:
            axes[f"{key}:{inner}"].append(Axis(name, axis, 1, n_heads, offset))

    for i in range(n_layer):
        b = f"{h}{i}."
        key = f"{b}attn"
        stream += [
            Axis(f"{b}ln_1.weight", 0),
            Axis(f"{b}ln_1.bias", 0),
            Axis(f"{b}attn.c_attn.weight", 0),
            Axis(f"{b}attn.c_proj.weight", 1),
            Axis(f"{b}attn.c_proj.bias", 0),
            Axis(f"{b}ln_2.weight", 0),
            Axis(f"{b}ln_2.bias", 0),
            Axis(f"{b}mlp.c_fc.weight", 0),
            Axis(f"{b}mlp.c_proj.weight", 1),
            Axis(f"{b}mlp.c_proj.bias", 0),
        ]
        for suffix, size in ((":heads", n_heads), (":qk", head_dim), (":vo", head_dim)):
            if size > 1:
                sizes[key + suffix], axes[key + suffix] = size, []
        for offset, inner_perm in ((0, "qk"), (d, "qk"), (2 * d, "vo")):  # queries, keys, values
            head_axes(key, inner_perm, f"{b}attn.c_attn.weight", 1, offset)
            head_axes(key, inner_perm, f"{b}attn.c_attn.bias", 0, offset)
        head_axes(key, "vo", f"{b}attn.c_proj.weight", 0)  # the output projection reads the heads' values
        sizes[f"{b}mlp"] = mlp_width
        axes[f"{b}mlp"] = [
            Axis(f"{b}mlp.c_fc.weight", 1),
            Axis(f"{b}mlp.c_fc.bias", 0),
            Axis(f"{b}mlp.c_proj.weight", 0),
        ]
        producers[f"{b}mlp"] = [f"{b}mlp.c_fc"]
    stream += [Axis(f"{t}ln_f.weight", 0), Axis(f"{t}ln_f.bias", 0), Axis(f"{prefix}lm_head.weight", 1)]
    axes["residual"] = stream
    order = ["residual"] + [k for k in sizes if k != "residual"]
    return PermutationSpec(
        {k: sizes[k] for k in order}, {k: axes[k] for k in order}, {k: producers.get(k, []) for k in order}
    )


def is_hf_name(name: str | None) -> bool:
    return bool(name) and str(name).startswith("hf:")


def build_from_name(name: str, input_shape: Sequence[int], num_classes: int, args: Mapping[str, Any]) -> HFModel:
    """``hf:FAMILY`` with its arguments (what ``--model hf:gpt2 --model-args ...`` names)."""
    return build(name.split(":", 1)[1], input_shape, num_classes, **dict(args))


__all__ = ["FAMILIES", "HFModel", "OUTPUTS", "build", "build_from_name", "gpt2_spec", "is_hf_name"]
