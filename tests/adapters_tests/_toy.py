"""Tiny models for ``[model] kind = "module"`` tests (factories named as "<this module>:<function>")."""

from __future__ import annotations

import torch
from torch import nn


class _ConvBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.act = nn.GELU()
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.act(self.conv(x))
        return x + y if self.skip else y


class ToyConvNet(nn.Module):
    """stem conv → blocks (one stride-2 block in the middle, so some spans change shape) → mean → fc."""

    def __init__(self, channels: int = 8, depth: int = 4, in_channels: int = 3, classes: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        layers = []
        for k in range(depth):
            if k == depth // 2:
                layers.append(_ConvBlock(channels, 2 * channels, stride=2))
                channels *= 2
            else:
                layers.append(_ConvBlock(channels, channels))
        self.body = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.body(self.stem(x)).mean(dim=(2, 3)))


class _MLPBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class ToyTokenMLP(nn.Module):
    """patchify (conv, stride = patch) → tokens (N, T, D) → residual MLP blocks → norm → head."""

    def __init__(self, dim: int = 16, depth: int = 3, patch: int = 4, in_channels: int = 3, classes: int = 3):
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.layers = nn.ModuleList(_MLPBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.norm(h).mean(1))


class ToyNotChained(ToyTokenMLP):
    """Does something between blocks: the generic adapter must refuse it."""

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        for layer in self.layers:
            h = layer(h) * 0.5
        return self.head(self.norm(h).mean(1))


def conv_net(**kwargs) -> nn.Module:
    return ToyConvNet(**kwargs)


def token_mlp(**kwargs) -> nn.Module:
    return ToyTokenMLP(**kwargs)


def not_chained(**kwargs) -> nn.Module:
    return ToyNotChained(**kwargs)


NOT_A_FACTORY = 3


class _Overflow(nn.Module):
    """A block whose output overflows float32 (every value becomes ±inf)."""

    def forward(self, x):
        return x * 1e30 * 1e30


def overflow_mlp(at: int = 2, **kwargs) -> nn.Module:
    """ToyTokenMLP whose block ``at`` overflows: boundary ``at + 1`` holds Inf (tests/test_reliability.py)."""
    model = ToyTokenMLP(**kwargs)
    model.layers[at] = _Overflow()
    return model


def rank_deficient_mlp(**kwargs) -> nn.Module:
    """ToyTokenMLP whose patch embedding leaves half the channels at exactly zero, so boundary 0's statistics are
    rank-deficient (spans starting at 0 need the ridge)."""
    model = ToyTokenMLP(**kwargs)
    half = model.patch.out_channels // 2
    with torch.no_grad():
        model.patch.weight[half:] = 0
        model.patch.bias[half:] = 0
    return model
