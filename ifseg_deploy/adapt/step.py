"""One optimizer step of adaptation, shared by the trainer and the throughput benchmark.

:class:`TrainStep` knows nothing about word maps: it gets a batch (a tuple of tensors), a ``forward(*batch) ->
logits``, a ``targets(*batch) -> target`` and a ``loss(logits, target)``, so any data source (the artificial word
maps of ``data.py``, or labelled images) trains through the same step: the paper's AdamW, cosine schedule,
gradient clipping, autocast and, for fp16, loss scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor

from .config import AdaptConfig

#: Called between the phases of a step with the name of the phase that just ended ("data", "forward",
#: "backward", "optimizer"); a benchmark records a timestamp there.
Clock = Callable[[str], None]


def cosine_factor(total: int) -> Callable[[int], float]:
    """lr(t) = lr/2 (1 + cos(pi t / T)): fairseq's cosine schedule with no warm-up, period = the whole run."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise ValueError(f"precision {precision} needs a CUDA device; use fp32 (or auto) on {device}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class TrainStep:
    """Forward under autocast, loss, scaled backward, clipping, AdamW step, scaler update, schedule step.

    Holds the optimizer, the learning-rate schedule and the gradient scaler (their states are what a checkpoint
    saves besides the weights). Build it with :meth:`from_config`.
    """

    def __init__(self, forward: Callable[..., Tensor], targets: Callable[..., Tensor],
                 loss: Callable[[Tensor, Tensor], Tensor], params: Sequence[torch.nn.Parameter],
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler, *, clip_norm: float, device_type: str,
                 amp_dtype: torch.dtype | None) -> None:
        self.forward, self.targets, self.loss = forward, targets, loss
        self.params = list(params)
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.clip_norm = clip_norm if clip_norm > 0 else math.inf
        self.device_type = device_type
        self.amp_dtype = amp_dtype

    @classmethod
    def from_config(cls, forward: Callable[..., Tensor], targets: Callable[..., Tensor],
                    loss: Callable[[Tensor, Tensor], Tensor], params: Sequence[torch.nn.Parameter], cfg: AdaptConfig,
                    device: torch.device, amp_dtype: torch.dtype | None) -> TrainStep:
        """AdamW with ``cfg``'s hyper-parameters over ``params``, the cosine schedule over ``cfg.steps`` and a
        gradient scaler that is active for fp16 only."""
        params = list(params)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_factor(cfg.steps))
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        return cls(forward, targets, loss, params, optimizer, scheduler, scaler, clip_norm=cfg.clip_norm,
                   device_type=device.type, amp_dtype=amp_dtype)

    @property
    def lr(self) -> float:
        """The learning rate the next step uses."""
        return float(self.scheduler.get_last_lr()[0])

    def __call__(self, batch: Sequence[Tensor], clock: Clock | None = None) -> tuple[Tensor, Tensor]:
        """Train on ``batch``; returns (loss, gradient norm before clipping) as tensors: reading them is the
        caller's host sync. ``clock`` is called after each phase (nothing is synchronised here)."""
        target = self.targets(*batch)
        if clock is not None:
            clock("data")
        with torch.autocast(self.device_type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext():
            logits = self.forward(*batch)
        loss = self.loss(logits.float(), target)
        if clock is not None:
            clock("forward")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clock is not None:
            clock("backward")
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if clock is not None:
            clock("optimizer")
        return loss.detach(), grad_norm

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
