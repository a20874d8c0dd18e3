"""Sequence tasks made from nothing but Python itself: modular addition and a character-level language model.

``modular-add`` is a + b mod p, the grokking task of Power et al. (2022); ``char-lm`` predicts the next
character of the Zen of Python (from the standard library's ``this`` module) or of an installed module's
source. Inputs are int64 token ids; the zoo transformer reads them.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import torch

from modescape.errors import UserError
from modescape.zoo.data import Pair, require

# ----------------------------------------------------------------------------------------------
# Sequence tasks made here: modular addition (grokking) and a character-level language model
# ----------------------------------------------------------------------------------------------


def modular_add(
    root: str | None, *, p: int = 97, train_fraction: float = 0.3, split_seed: int = 0
) -> tuple[Pair, Pair, int]:
    """Every equation ``a + b = c (mod p)`` as the token sequence ``[a, b, =]`` with label ``c``.

    The task of Power et al. (2022), "Grokking: generalization beyond overfitting on small algorithmic
    datasets": tokens 0..p-1 are the numbers and token p is ``=``; a seeded random ``train_fraction``
    of the p^2 pairs trains, the rest tests. There are p + 1 classes (the ``=`` token is never a
    target), so inputs and outputs share one vocabulary and a transformer's head can be tied to its
    embedding. Weight decay, the other knob of grokking, is a training argument (``--wd``).
    """
    require(p >= 2, f"modular-add needs p >= 2, got {p}")
    require(0 < train_fraction < 1, f"modular-add train_fraction must be in (0, 1), got {train_fraction}")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, p)], 1)
    y = (a + b) % p
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(split_seed))
    n_train = int(round(train_fraction * p * p))
    require(1 <= n_train < p * p, f"modular-add train_fraction {train_fraction} leaves an empty split for p={p}")
    tr, te = order[:n_train].sort().values, order[n_train:].sort().values
    return (x[tr], y[tr]), (x[te], y[te]), p + 1


def _zen_of_python() -> str:
    """The Zen of Python, from the standard library's ``this`` module (rot13-encoded there), read with
    ``ast`` rather than imported (importing ``this`` prints it)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("this")
    if spec is None or spec.origin is None:
        raise UserError("the standard library module 'this' is missing: pass text=module:NAME instead")
    tree = ast.parse(Path(spec.origin).read_text())
    encoded = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "s"
    )
    return codecs.decode(encoded, "rot13")


def corpus_text(text: str) -> str:
    """The text of a character-level corpus: ``"zen"`` (the Zen of Python, from the standard library;
    identical in every Python 3 release) or ``"module:NAME"`` (the source of an importable pure-Python
    module, e.g. ``module:textwrap``: deterministic for one Python or package version; the dataset's
    meta records its hash)."""
    if text == "zen":
        return _zen_of_python()
    if text.startswith("module:"):
        import importlib.util

        name = text.split(":", 1)[1]
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise UserError(
                f"char-lm text {text!r}: no pure-Python module {name!r} to read; use text=zen or "
                "text=module:NAME with a module such as textwrap"
            )
        return Path(spec.origin).read_text(encoding="utf-8")
    raise UserError(f"unknown char-lm text {text!r}: use zen or module:NAME (e.g. module:textwrap)")


def char_lm(
    root: str | None,
    *,
    text: str = "zen",
    length: int = 32,
    stride: int = 1,
    test_fraction: float = 0.2,
    split_seed: int = 0,
) -> tuple[Pair, Pair, int]:
    """Next-character prediction over a text that ships with Python (see `corpus_text`).

    The characters get ids in sorted order (the classes); samples are windows of ``length`` ids every
    ``stride`` characters, with targets the same windows shifted by one ([N, T] both, int64). The first
    ``1 - test_fraction`` of the text gives the training windows and the rest the test windows, so no
    test character is seen in training. ``split_seed`` is unused (the split is by position).
    """
    require(length >= 1, f"char-lm length must be >= 1, got {length}")
    require(stride >= 1, f"char-lm stride must be >= 1, got {stride}")
    require(0 < test_fraction < 1, f"char-lm test_fraction must be in (0, 1), got {test_fraction}")
    corpus = corpus_text(text)
    chars = sorted(set(corpus))
    ids = torch.tensor([chars.index(c) for c in corpus], dtype=torch.int64)
    cut = int(len(ids) * (1 - test_fraction))

    def windows(part: torch.Tensor) -> Pair:
        starts = torch.arange(0, len(part) - length, stride)
        require(len(starts) >= 1, f"char-lm text {text!r} is too short for windows of {length} characters")
        idx = starts[:, None] + torch.arange(length + 1)
        seq = part[idx]
        return seq[:, :-1].contiguous(), seq[:, 1:].contiguous()

    return windows(ids[:cut]), windows(ids[cut:]), len(chars)
