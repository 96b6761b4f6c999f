"""IFSeg's artificial training data, made on the model's device every step (ifseg_method.md §2.1).

Each sample is a U x V grid of class ids with U, V uniform in 1..S and the ids uniform over the M classes (with
replacement; the "unknown" class is never drawn). The grid is stored padded to S x S; only its top-left U x V
block is read. Everything here is tensor ops on one device with a dedicated generator: no CPU loops, no host
syncs, no data-loader workers, and a state that checkpoints can save for bit-exact resumption.
"""

from __future__ import annotations

import torch
from torch import Tensor


class ArtificialMaps:
    """Random category grids for ``num_classes`` classes.

    Under DDP every rank holds the same seeded stream, draws the whole global batch and keeps its own slice
    (rows ``rank * B/world_size`` onwards), so a K-process run trains on exactly the samples a 1-process run with
    the same global batch and seed sees. Drawing the global batch costs B x S x S random integers per rank: nothing
    next to a step.
    """

    def __init__(self, num_classes: int, grid_max: int = 32, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:
        if num_classes < 1 or grid_max < 1:
            raise ValueError("need at least one class and grid_max >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        self.num_classes = num_classes
        self.grid_max = grid_max
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def sample(self, batch: int) -> tuple[Tensor, Tensor]:
        """This rank's share of a global batch of ``batch`` samples: (grid (b, S, S) int64, sizes (b, 2) int64
        holding U and V), b = batch / world_size."""
        if batch % self.world_size:
            raise ValueError(f"batch {batch} is not divisible by the {self.world_size} processes")
        s = self.grid_max
        sizes = torch.randint(1, s + 1, (batch, 2), generator=self.generator, device=self.device)
        grid = torch.randint(0, self.num_classes, (batch, s, s), generator=self.generator, device=self.device)
        if self.world_size == 1:
            return grid, sizes
        local = batch // self.world_size
        mine = slice(self.rank * local, (self.rank + 1) * local)
        return grid[mine], sizes[mine]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
