"""Where the model opts out of autocast: the parts whose numbers reduced precision would change visibly."""

from __future__ import annotations

import contextlib

import torch


def full_precision(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context that turns autocast off on ``device`` while it is on (and does nothing otherwise, so traced
    graphs stay plain): used for the position biases (a bf16 matmul there blurs the attention logits, and a bias-cache
    entry must not depend on whether autocast happened to be on), the ResNet and the class logits."""
    device_type = torch.device(device).type
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()
