"""Hand-written permutation specs and small models with concatenation, groups and attention, shared by
the symmetry tests."""

import torch
from torch import nn

from modescape.symmetry import Axis

DIG = (1, 8, 8)


def A(name, axis=0, block=1):
    return Axis(name, axis, block)


def G(name, axis, block=1, groups=1, offset=0):
    return Axis(name, axis, block, groups, offset)


def perm(size, *axes):
    return (size, frozenset(a for group in axes for a in (group if isinstance(group, list) else [group])))


def canon(*perms):
    return frozenset(perms)


class Concat(nn.Module):
    """DenseNet-style: a layer reads the concatenation of two feature maps along the channels."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1), nn.Conv2d(7, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x):
        h1 = torch.relu(self.c1(x))
        h = torch.cat([h1, torch.relu(self.c2(h1))], dim=1)  # channels 0-3 from c1, 4-6 from c2
        return self.fc(torch.relu(self.c3(h)).mean((2, 3)))

    def example(self):
        return torch.randn(3, *DIG)


class GroupedConv(nn.Module):
    """GroupNorm with 2 groups of 4, then a convolution with 2 groups, then a 1x1 conv as a Linear on the
    transposed [B, H*W, C] sequence."""

    def __init__(self):
        super().__init__()
        self.c0, self.gn = nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.c1(torch.relu(self.gn(self.c0(x)))))
        seq = h.flatten(2).transpose(1, 2)  # [B, H*W, C]: channels last
        return self.fc(seq).mean(1)

    def example(self):
        return torch.randn(3, *DIG)


class MHA(nn.Module):
    """nn.MultiheadAttention in a residual block, channels last ([B, T, C] with batch_first)."""

    def __init__(self, batch_first=True, kdim=None):
        super().__init__()
        self.batch_first = batch_first
        self.emb = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(
            8, 2, batch_first=batch_first, kdim=kdim, vdim=kdim, bias=True, add_bias_kv=kdim is None
        )
        self.kv = nn.Linear(4, kdim) if kdim else None
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = self.emb(x)
        kv = self.kv(x) if self.kv is not None else h
        if not self.batch_first:
            h, kv = h.transpose(0, 1), kv.transpose(0, 1)
        a, _ = self.attn(h, kv, kv, need_weights=False)
        h = h + a
        if not self.batch_first:
            h = h.transpose(0, 1)
        return self.fc(h).mean(1)

    def example(self):
        return torch.randn(3, 5, 4)
