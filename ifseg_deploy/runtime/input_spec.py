"""What input shapes an exported model accepts: one fixed size, or min/opt/max ranges of height and width.

The same object gives the ``torch.onnx.export`` dynamic shapes, the metadata stored in the ONNX file and the
TensorRT optimization profile, so the three cannot disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ifseg_deploy.errors import InputError

Size = tuple[int, int]

#: Defaults of ``--dynamic``: the short side is 512 after preprocessing; 1024 caps what a Jetson's memory
#: holds for a ViT-B encoder (64 x 64 = 4096 tokens, attention scores of ~0.8 GB per layer at fp32).
DEFAULT_MIN: Size = (256, 256)
DEFAULT_OPT: Size = (512, 683)
DEFAULT_MAX: Size = (1024, 1024)


class SpecError(InputError):
    """An impossible input specification (sizes out of order, too small for the refinement, ...)."""


def parse_size(text: str) -> Size:
    """``"512x683"`` (height x width) -> (512, 683); a single number means a square."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX*,]\s*(\d+))?\s*", text)
    if not m:
        raise SpecError(f"cannot read {text!r} as a size; write HEIGHTxWIDTH, e.g. 512x683")
    h = int(m.group(1))
    w = int(m.group(2)) if m.group(2) else h
    if h < 1 or w < 1:
        raise SpecError(f"size {text!r} must be positive")
    return h, w


def format_size(size: Size) -> str:
    return f"{size[0]}x{size[1]}"


def grid_cells(size: Size, patch: int = 16) -> int:
    return -(-size[0] // patch) * -(-size[1] // patch)


@dataclass(frozen=True)
class InputSpec:
    """Accepted (height, width) range and the largest batch; ``min == opt == max`` is a fixed-size model."""

    min_size: Size
    opt_size: Size
    max_size: Size
    max_batch: int = 1

    @classmethod
    def fixed(cls, size: Size, max_batch: int = 1) -> InputSpec:
        return cls(tuple(size), tuple(size), tuple(size), max_batch)  # type: ignore[arg-type]

    @classmethod
    def dynamic(cls, min_size: Size = DEFAULT_MIN, opt_size: Size = DEFAULT_OPT, max_size: Size = DEFAULT_MAX,
                max_batch: int = 1) -> InputSpec:
        return cls(tuple(min_size), tuple(opt_size), tuple(max_size), max_batch)  # type: ignore[arg-type]

    @property
    def is_dynamic(self) -> bool:
        return self.min_size != self.max_size

    @property
    def dynamic_axes(self) -> tuple[bool, bool]:
        """Whether height / width vary."""
        return self.min_size[0] != self.max_size[0], self.min_size[1] != self.max_size[1]

    @property
    def fixed_size(self) -> Size | None:
        return None if self.is_dynamic else self.opt_size

    def validate(self, min_cells: int = 1, patch: int = 16) -> InputSpec:
        """Raise :class:`SpecError` unless min <= opt <= max per axis, batch >= 1, and the smallest input still
        has ``min_cells`` grid cells (the kNN refinement needs k of them)."""
        for axis, name in ((0, "height"), (1, "width")):
            lo, mid, hi = self.min_size[axis], self.opt_size[axis], self.max_size[axis]
            if not lo <= mid <= hi:
                raise SpecError(f"{name}: need min <= opt <= max, got {lo}, {mid}, {hi}")
            if lo < 1:
                raise SpecError(f"{name} must be positive")
        if self.max_batch < 1:
            raise SpecError(f"max batch must be >= 1 (got {self.max_batch})")
        if grid_cells(self.min_size, patch) < min_cells:
            raise SpecError(f"the smallest input {format_size(self.min_size)} gives a grid of "
                            f"{grid_cells(self.min_size, patch)} cell(s); the refinement needs at least {min_cells}")
        return self

    def accepts(self, height: int, width: int, batch: int = 1) -> bool:
        return (self.min_size[0] <= height <= self.max_size[0] and self.min_size[1] <= width <= self.max_size[1]
                and 1 <= batch <= self.max_batch)

    def describe(self) -> str:
        if not self.is_dynamic:
            return f"fixed {format_size(self.opt_size)}, batch 1..{self.max_batch}"
        return (f"dynamic {format_size(self.min_size)} .. {format_size(self.max_size)} (opt "
                f"{format_size(self.opt_size)}), batch 1..{self.max_batch}")

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW shapes, e.g. for a TensorRT optimization profile (opt batch 1: the edge case)."""
        return ((1, 3, *self.min_size), (1, 3, *self.opt_size), (self.max_batch, 3, *self.max_size))

    def to_dict(self) -> dict[str, Any]:
        return {"dynamic": self.is_dynamic, "min": list(self.min_size), "opt": list(self.opt_size),
                "max": list(self.max_size), "max_batch": self.max_batch}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        def size(v: Any) -> Size:
            if not (isinstance(v, (list, tuple)) and len(v) == 2):
                raise SpecError(f"bad size {v!r}")
            return int(v[0]), int(v[1])

        return cls(size(d["min"]), size(d["opt"]), size(d["max"]), int(d.get("max_batch", 1)))
