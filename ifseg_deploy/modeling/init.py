"""Seeded random weights for a SegOFA model, drawn by one rule with a few knobs.

Three users need random models and want different things from them: the tests want every tensor non-trivial (so a
wrong formula cannot hide behind ones and zeros), the speed benchmark wants a model whose probabilities are as
peaked as a trained one's, and the synthetic world wants an *untrained* OFA (zero relative tables, unit norms) that
does not already segment by accident. :class:`InitProfile` says how each kind of tensor is drawn; the presets below
are those three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

PAD_ID = 1


@dataclass(frozen=True)
class InitProfile:
    """How :func:`random_init_` draws each kind of tensor (matrices are N(0, gain^2 / fan_in))."""

    #: gain of the transformer's matrices
    matrix_gain: float = 1.0
    #: gain of tensors whose name holds "embed" (position tables, the ResNet, the class table); None: matrix_gain
    embedding_gain: float | None = None
    #: gain of the token table ``encoder.embed_tokens``; None: embedding_gain
    token_table_gain: float | None = None
    #: 4-D weights He-normal N(0, 2 / fan_in) (no batch statistics to lean on) instead of the matrix rule
    conv_he: bool = False
    #: std of the relative-position tables (0: zeros, as OFA initialises them)
    rel_table_std: float = 0.5
    #: norm gains are 1 + noise * N(0, 1) (0: exactly 1)
    scale_noise: float = 0.1
    #: per-head output scales ``c_attn`` are 1 + noise * N(0, 1); None: scale_noise
    head_scale_noise: float | None = None
    #: std of biases and other 1-D tensors (0: zeros)
    bias_std: float = 0.1
    #: also draw float buffers (batch-norm statistics: running_var uniform in [0.5, 1.5])
    buffers: bool = True
    #: zero the token table's <pad> row (fairseq does)
    zero_pad_row: bool = False

    def gain(self, name: str) -> float:
        embedding = self.matrix_gain if self.embedding_gain is None else self.embedding_gain
        if name == "encoder.embed_tokens.weight":
            return embedding if self.token_table_gain is None else self.token_table_gain
        return embedding if "embed" in name else self.matrix_gain


#: Non-trivial values everywhere: the numerics tests' fixtures.
TEST_PROFILE = InitProfile(head_scale_noise=0.2)
#: Speed runs: larger transformer weights keep cells apart and a long token table makes the tied head's
#: softmax peaked (median top-1 about 0.3 instead of 1/M), so engines are not compared on near-ties only.
SPEED_PROFILE = InitProfile(matrix_gain=2.0, embedding_gain=1.0, token_table_gain=8.0)


def untrained_profile(transformer_gain: float) -> InitProfile:
    """OFA's own untrained state (zero relative tables, unit norms, zero biases), with the transformer's matrices
    at ``transformer_gain``; parameters only, the ResNet He-normal, the <pad> row zero."""
    return InitProfile(matrix_gain=transformer_gain, token_table_gain=1.0, conv_he=True, rel_table_std=0.0,
                       scale_noise=0.0, head_scale_noise=0.0, bias_std=0.0, buffers=False, zero_pad_row=True)


def _one_plus(t: torch.Tensor, noise: float, g: torch.Generator) -> None:
    if noise == 0.0:
        t.fill_(1.0)
    else:
        t.copy_(1 + noise * torch.randn(t.shape, generator=g))


def _scaled(t: torch.Tensor, std: float, g: torch.Generator) -> None:
    if std == 0.0:
        t.zero_()
    else:
        t.copy_(torch.randn(t.shape, generator=g) * std)


@torch.no_grad()
def random_init_(model: nn.Module, seed: int = 0, profile: InitProfile = TEST_PROFILE) -> nn.Module:
    """Fill ``model``'s float parameters (and buffers, per the profile) in place, in a fixed order from one
    seeded generator, so a seed always gives the same model."""
    g = torch.Generator().manual_seed(seed)
    tensors = list(model.named_parameters())
    if profile.buffers:
        tensors += list(model.named_buffers())
    for name, t in tensors:
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if "running_var" in name:
            t.copy_(0.5 + torch.rand(t.shape, generator=g))
        elif "rel_pos_table" in name:
            _scaled(t, profile.rel_table_std, g)
        elif leaf == "c_attn":
            _one_plus(t, profile.scale_noise if profile.head_scale_noise is None else profile.head_scale_noise, g)
        elif t.dim() == 1 and leaf == "weight":  # norm gains
            _one_plus(t, profile.scale_noise, g)
        elif t.dim() == 1:
            _scaled(t, profile.bias_std, g)
        else:
            fan_in = math.prod(t.shape[1:])
            gain = math.sqrt(2.0) if (profile.conv_he and t.dim() == 4) else profile.gain(name)
            t.copy_(torch.randn(t.shape, generator=g) * (gain / math.sqrt(fan_in)))
            if profile.zero_pad_row and name == "encoder.embed_tokens.weight":
                t[PAD_ID].zero_()
    return model
