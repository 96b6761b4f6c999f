"""Every knob of image-free adaptation, with the paper's recipe as the defaults (ifseg_method.md §2-§3)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class AdaptConfig:
    """Defaults reproduce IFSeg's run scripts: AdamW (0.9, 0.999, 1e-8), decoupled weight decay 0.1, lr 5e-5
    cosine to 0 without warm-up, clip 1.0, dropout 0.1, drop path 0.1, global batch 16, 2000 steps, random
    U x V grids with U, V uniform in 1..32 and classes uniform with replacement."""

    steps: int = 2000
    batch_size: int = 16  # global batch: split over DDP ranks
    lr: float = 5e-5
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float = 1.0
    dropout: float = 0.1
    drop_path: float = 0.1
    grid_max: int = 32  # S: U and V are drawn uniformly from 1..S
    wordmap_size: int = 32  # the encoder grid the word map is resized to (the 512 px / 16 of pre-training)
    target_size: int = 512  # the loss compares logits upsampled to this many pixels per side
    seed: int = 0
    precision: str = "auto"  # auto: bf16 autocast on CUDA (fp16 + loss scaling where bf16 is missing), fp32 on CPU
    kernel: str = "auto"  # word-map embedding: auto | triton | torch
    loss: str = "chunked"  # chunked (memory-lean upsample + CE) | reference (materialises the full logits)
    checkpoint_every: int = 200
    log_every: int = 10
    #: None: the paper's per-vocabulary recipe (the model learns the adapted names). A list of names:
    #: open-vocabulary adaptation, each sample drawing ``vocab_min..vocab_max`` of them (capped by the list's
    #: size) as its own prompt and classes, so the model segments whatever its prompt names.
    vocabulary: list[str] | None = None
    vocab_min: int = 2
    vocab_max: int = 32

    def validate(self, world_size: int = 1) -> None:
        """Refuse out-of-range options with a message naming the option."""
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.batch_size % world_size == 0,
             f"batch_size {self.batch_size} is not divisible by the {world_size} processes"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (all(0 <= b < 1 for b in self.betas), "betas must lie in [0, 1)"),
            (self.eps > 0, "eps must be > 0"),
            (self.clip_norm >= 0, "clip_norm must be >= 0 (0 disables clipping)"),
            (0 <= self.dropout < 1, "dropout must lie in [0, 1)"),
            (0 <= self.drop_path < 1, "drop_path must lie in [0, 1)"),
            (1 <= self.grid_max <= self.wordmap_size,
             f"grid_max must lie in 1..wordmap_size ({self.wordmap_size})"),
            (self.wordmap_size >= 1 and self.target_size >= 1, "wordmap_size and target_size must be >= 1"),
            (self.precision in ("auto", "fp32", "bf16", "fp16"), "precision must be auto, fp32, bf16 or fp16"),
            (self.kernel in ("auto", "triton", "torch"), "kernel must be auto, triton or torch"),
            (self.loss in ("chunked", "reference"), "loss must be chunked or reference"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.log_every >= 1, "log_every must be >= 1"),
            (1 <= self.vocab_min <= self.vocab_max, "need 1 <= vocab_min <= vocab_max"),
            (self.vocabulary is None or len(self.vocabulary) >= 2,
             "an open vocabulary needs at least 2 names"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AdaptConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown adaptation options {sorted(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if d.get("vocabulary") is not None:
            d["vocabulary"] = list(d["vocabulary"])
        return cls(**d)
