"""IFSeg's artificial training data, made on the model's device every step (ifseg_method.md §2.1).

Each sample is a U x V grid of class ids with U, V uniform in 1..S and the ids uniform over the M classes (with
replacement; the "unknown" class is never drawn). The grid is stored padded to S x S; only its top-left U x V
block is read. Everything here is tensor ops on one device with a dedicated generator: no CPU loops, no host
syncs, no data-loader workers, and a state that checkpoints can save for bit-exact resumption.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Distinct per-rank streams: rank r draws from seed + r * _RANK_STRIDE, so rank 0 reproduces a 1-process run.
_RANK_STRIDE = 1_000_003


class ArtificialMaps:
    """Random category grids for ``num_classes`` classes."""

    def __init__(self, num_classes: int, grid_max: int = 32, *, seed: int = 0, rank: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if num_classes < 1 or grid_max < 1:
            raise ValueError("need at least one class and grid_max >= 1")
        self.num_classes = num_classes
        self.grid_max = grid_max
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed + rank * _RANK_STRIDE)

    def sample(self, batch: int) -> tuple[Tensor, Tensor]:
        """(grid (B, S, S) int64, sizes (B, 2) int64 holding U and V)."""
        s = self.grid_max
        sizes = torch.randint(1, s + 1, (batch, 2), generator=self.generator, device=self.device)
        grid = torch.randint(0, self.num_classes, (batch, s, s), generator=self.generator, device=self.device)
        return grid, sizes

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
