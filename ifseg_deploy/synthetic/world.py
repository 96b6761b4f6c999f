"""A procedural world: concept categories with their own look, and scenes of irregular regions with exact masks.

Every scene comes from one integer seed (``numpy.random.default_rng(seed)``) and is painted per pixel from its
region map, so the mask is exact by construction. Texture scales are in pixels (like real textures), region
layout is relative to the image size, so a scene can be made at any size.

Seed split (documented contract): the world-model build draws its training scenes from :data:`TRAIN_SEEDS`;
:data:`VALIDATION_SEEDS` and :data:`TEST_SEEDS` never appear in any training, so numbers measured on them are
on scenes the model never saw. Image-free adaptation sees no scene at all.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALL_CATEGORIES",
    "CONCEPTS",
    "DEFAULT_CATEGORIES",
    "SPLITS",
    "TEST_SEEDS",
    "TRAIN_SEEDS",
    "VALIDATION_SEEDS",
    "Concept",
    "SyntheticScenes",
    "make_scene",
    "to_model_input",
]

TRAIN_SEEDS = range(0, 1_000_000_000)
VALIDATION_SEEDS = range(1_000_000_000, 1_500_000_000)
TEST_SEEDS = range(1_500_000_000, 2_000_000_000)
SPLITS = {"train": TRAIN_SEEDS, "validation": VALIDATION_SEEDS, "test": TEST_SEEDS}


@dataclass(frozen=True)
class Concept:
    """Appearance statistics of one concept; each region draws its own jitter around them."""

    name: str
    color: tuple[float, float, float]  # mean RGB, 0..255
    pattern: str  # "plain" | "stripes" | "bricks" (running bond) | "tiles" (square grid)
    period: float = 8.0  # stripe period / brick or tile width in pixels
    angle: float = 0.0  # pattern orientation in degrees (0 = horizontal bands)
    angle_jitter: float = 10.0
    contrast: float = 0.0  # pattern amplitude as a fraction of the brightness
    grain: float = 0.0  # per-pixel noise amplitude (0..255 units)
    blotch: float = 0.0  # amplitude of medium-scale noise (0..255 units)
    blotch_scale: float = 8.0  # its lattice spacing in pixels
    mortar: tuple[float, float, float] = (200.0, 195.0, 185.0)  # joints of bricks and tiles


# Pairs that share a colour family (sky/water, grass/forest, sand/snow, wood/dirt, road/rock, brick/carpet)
# differ in texture, so the world model has to look at more than the mean colour of a cell.
CONCEPTS: dict[str, Concept] = {
    c.name: c
    for c in (
        # The original eight: the default world (the demo's). Their scenes, vocabulary and model are frozen.
        Concept("sky", (125, 178, 232), "plain", grain=2.0, blotch=14.0, blotch_scale=24.0),
        Concept("grass", (82, 150, 58), "stripes", period=4.0, angle=90.0, angle_jitter=15.0, contrast=0.30,
                grain=14.0),
        Concept("water", (38, 96, 165), "stripes", period=11.0, angle=0.0, angle_jitter=8.0, contrast=0.28,
                grain=4.0),
        Concept("sand", (214, 188, 134), "stripes", period=18.0, angle=35.0, angle_jitter=25.0, contrast=0.07,
                grain=18.0),
        Concept("brick", (166, 66, 46), "bricks", period=16.0, angle=0.0, angle_jitter=4.0, grain=9.0),
        Concept("snow", (238, 242, 250), "plain", grain=4.0, blotch=6.0, blotch_scale=10.0),
        Concept("road", (96, 96, 101), "plain", grain=16.0, blotch=5.0, blotch_scale=6.0),
        Concept("forest", (36, 82, 40), "plain", grain=10.0, blotch=38.0, blotch_scale=5.0),
        # Eight more for open-vocabulary work (ALL_CATEGORIES); new concepts go at the end.
        Concept("wood", (150, 100, 58), "stripes", period=7.0, angle=0.0, angle_jitter=12.0, contrast=0.22,
                grain=5.0),
        Concept("dirt", (96, 70, 48), "plain", grain=20.0, blotch=18.0, blotch_scale=7.0),
        Concept("tile", (64, 158, 160), "tiles", period=20.0, angle=0.0, angle_jitter=4.0, grain=3.0,
                mortar=(222, 222, 214)),
        Concept("carpet", (132, 50, 112), "plain", grain=24.0),
        Concept("leaf", (156, 190, 42), "stripes", period=9.0, angle=45.0, angle_jitter=10.0, contrast=0.20,
                grain=6.0),
        Concept("rock", (132, 124, 114), "plain", grain=7.0, blotch=32.0, blotch_scale=14.0),
        Concept("metal", (172, 178, 190), "stripes", period=3.0, angle=0.0, angle_jitter=3.0, contrast=0.10,
                grain=3.0),
        Concept("lava", (226, 96, 24), "plain", grain=8.0, blotch=48.0, blotch_scale=9.0),
    )
}
# The world of the demo and of every default: the original eight concepts.
DEFAULT_CATEGORIES: tuple[str, ...] = tuple(CONCEPTS)[:8]
# Every concept: the open-vocabulary world (its model aligns all sixteen names; see WorldRecipe.open_vocabulary).
ALL_CATEGORIES: tuple[str, ...] = tuple(CONCEPTS)


def _resolve(categories: Sequence[str] | None) -> list[Concept]:
    names = list(DEFAULT_CATEGORIES if categories is None else categories)
    unknown = [n for n in names if n not in CONCEPTS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"categories must be distinct names from {list(CONCEPTS)}, got {names}")
    return [CONCEPTS[n] for n in names]


def _smoothstep_coords(n: int, spacing: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(n, dtype=np.float32) / np.float32(spacing) + np.float32(offset)
    i0 = t.astype(np.int64)
    f = t - i0
    return i0, f * f * (3 - 2 * f)


def _lattice_shape(h: int, w: int, spacing: float) -> tuple[int, int]:
    return int(np.ceil(h / spacing)) + 2, int(np.ceil(w / spacing)) + 2


def _interpolate(rng: np.random.Generator, lattice: np.ndarray, h: int, w: int, spacing: float) -> np.ndarray:
    """(H, W) smoothstep interpolation of ``lattice`` (points every ``spacing`` px, random sub-cell offset).

    Separable: the lattice rows are interpolated along x first (small), then whole rows along y. No BLAS, whose
    threads cost more than they save at these sizes."""
    y0, fy = _smoothstep_coords(h, spacing, rng.uniform(0, 1))
    x0, fx = _smoothstep_coords(w, spacing, rng.uniform(0, 1))
    rows = lattice[:, x0] * (1 - fx) + lattice[:, x0 + 1] * fx
    top = np.take(rows, y0, axis=0)
    bottom = np.take(rows, y0 + 1, axis=0)
    bottom -= top
    bottom *= fy[:, None]
    top += bottom
    return top


def _lattice_noise(rng: np.random.Generator, h: int, w: int, spacing: float) -> np.ndarray:
    """Smooth value noise in [-1, 1]: a random lattice every ``spacing`` px, smoothstep-interpolated."""
    lattice = rng.uniform(-1.0, 1.0, _lattice_shape(h, w, spacing)).astype(np.float32)
    return _interpolate(rng, lattice, h, w, spacing)


def _warp(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Two octaves of displacement (in units of ``scale``): a coarse one bends region edges, a fine one makes
    them ragged. The coarse octave is sampled on the fine lattice, so one full-size interpolation does both."""
    fine = scale / 24
    gh, gw = _lattice_shape(h, w, fine)
    lattice = 0.09 * _lattice_noise(rng, gh, gw, 8.0) + rng.uniform(-0.012, 0.012, (gh, gw)).astype(np.float32)
    return _interpolate(rng, lattice, h, w, fine)


def _regions(rng: np.random.Generator, h: int, w: int, n: int) -> np.ndarray:
    """(H, W) int64 region ids: Voronoi cells of ``n`` random sites in domain-warped coordinates."""
    scale = float(max(h, w))
    sites = rng.uniform(0, 1, (n, 2)).astype(np.float32) * np.array([h, w], np.float32) / np.float32(scale)
    py = _warp(rng, h, w, scale)
    py += (np.arange(h, dtype=np.float32) / np.float32(scale))[:, None]
    px = _warp(rng, h, w, scale)
    px += (np.arange(w, dtype=np.float32) / np.float32(scale))[None, :]
    # argmin_i |p - s_i|^2 = argmin_i (|s_i|^2 - 2 p.s_i); a running minimum over the (few) sites, in place.
    best = np.full((h, w), np.inf, np.float32)
    region = np.zeros((h, w), np.int64)
    score, term, closer = np.empty_like(best), np.empty_like(best), np.empty((h, w), bool)
    for i, (sy, sx) in enumerate(sites):
        np.multiply(py, -2 * sy, out=score)
        np.multiply(px, -2 * sx, out=term)
        score += term
        score += sy * sy + sx * sx
        np.less(score, best, out=closer)
        np.minimum(best, score, out=best)
        np.putmask(region, closer, i)
    return region


# Columns of the per-region parameter table (gathered to pixels in one indexing operation).
_LUM, _COS, _SIN, _PERIOD, _PHASE, _CONTRAST, _GRAIN, _BLOTCH, _KIND = range(9)
_KINDS = ("plain", "stripes", "bricks", "tiles")
# Jointed patterns: courses (rows of units) per period and the shift of every other course, in units.
# Bricks: half-height courses in running bond; tiles: a square grid.
_JOINTED = {"bricks": (2.0, 0.5), "tiles": (1.0, 0.0)}
# Columns of the per-region joint table (only gathered where a jointed region lies).
_COURSES, _COURSE_HEIGHT, _BOND, _MORTAR_LUM = range(4)


def _bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    """The bounding box of the true pixels of a (H, W) mask, or None when there are none."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _region_table(rng: np.random.Generator, table: list[Concept]) -> tuple[np.ndarray, np.ndarray]:
    """Per-region parameters: (n, 9) float32 with the concept's statistics jittered, and (n, 3) chroma
    (colour / brightness)."""
    n = len(table)
    params = np.zeros((n, 9), np.float32)
    color = np.array([c.color for c in table], np.float32)
    color = color * rng.uniform(0.9, 1.1, (n, 1)) + rng.normal(0, 5, (n, 3))  # brightness and hue jitter
    params[:, _LUM] = np.maximum(color.mean(1), 1.0)
    angle = np.radians([c.angle + rng.uniform(-c.angle_jitter, c.angle_jitter) for c in table])
    params[:, _COS], params[:, _SIN] = np.cos(angle), np.sin(angle)
    params[:, _PERIOD] = [c.period for c in table] * rng.uniform(0.85, 1.15, n)
    params[:, _PHASE] = rng.uniform(0, 2 * np.pi, n)
    params[:, _CONTRAST] = [c.contrast for c in table] * rng.uniform(0.8, 1.2, n)
    params[:, _GRAIN] = [c.grain for c in table]
    params[:, _BLOTCH] = [c.blotch for c in table]
    params[:, _KIND] = [_KINDS.index(c.pattern) for c in table]
    return params, (color / params[:, _LUM, None]).astype(np.float32)


def _joint_table(table: list[Concept]) -> tuple[np.ndarray, np.ndarray]:
    """Per-region joints: (n, 4) float32 (zero courses: no joints) and (n, 3) mortar chroma. No randomness,
    so scenes without jointed concepts draw exactly what they drew before tiles existed."""
    joints = np.zeros((len(table), 4), np.float32)
    mortar = np.array([c.mortar for c in table], np.float32)
    for i, c in enumerate(table):
        if c.pattern in _JOINTED:
            courses, bond = _JOINTED[c.pattern]
            joints[i, :3] = courses, 1 / courses, bond
    joints[:, _MORTAR_LUM] = mortar.mean(1)
    return joints, mortar / joints[:, _MORTAR_LUM, None]


def make_scene(seed: int, size: tuple[int, int] = (256, 256), categories: Sequence[str] | None = None,
               num_regions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One scene: ``(image uint8 (H, W, 3) RGB, mask int64 (H, W))``; mask values index ``categories``.

    ``num_regions`` defaults to a random 3..9. Regions take concepts from a shuffled list, so the first
    ``len(categories)`` regions of a scene all show different concepts.
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    concepts = _resolve(categories)
    k = len(concepts)
    rng = np.random.default_rng(int(seed))
    n = int(rng.integers(3, 10)) if num_regions is None else int(num_regions)
    if n < 1:
        raise ValueError(f"num_regions must be >= 1, got {num_regions}")
    order = np.concatenate([rng.permutation(k) for _ in range(-(-n // k))])[:n]
    table = [concepts[c] for c in order]
    params, chroma = _region_table(rng, table)
    region = _regions(rng, h, w, n)
    px = np.take(params, region, axis=0)  # (H, W, 9): one gather, then views

    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    across = yy * px[..., _COS] - xx * px[..., _SIN]  # distance across the bands (0 degrees: horizontal bands)
    period, phase = px[..., _PERIOD], px[..., _PHASE]
    light = 1 + px[..., _CONTRAST] * np.sin(across * (2 * np.pi) / period + phase)
    light *= px[..., _LUM]  # brightness, then per-pixel noise, then the colour
    light += px[..., _GRAIN] * rng.standard_normal((h, w), dtype=np.float32)
    for scale in sorted({c.blotch_scale for c in table if c.blotch > 0}):
        amplitude = np.array([c.blotch if c.blotch_scale == scale else 0.0 for c in table], np.float32)
        box = _bbox(np.take(amplitude > 0, region))  # noise only where a region uses it
        if box is not None:
            light[box] += np.take(amplitude, region[box]) * _lattice_noise(rng, *region[box].shape, scale)

    lookup = region
    joints, mortar_chroma = _joint_table(table)
    box = _bbox(np.take(joints[:, _COURSES] > 0, region))
    if box is not None:  # courses of height period/courses, every other one shifted by ``bond`` units
        pb, pj = px[box], np.take(joints, region[box], axis=0)
        p, ph = pb[..., _PERIOD], pb[..., _PHASE]
        rows = (across[box] / p) * pj[..., _COURSES] + ph  # in units of courses, with a per-region offset
        row = np.floor(rows)
        along = yy[box[0]] * pb[..., _SIN] + xx[:, box[1]] * pb[..., _COS]
        units = along / p + ph + (row.astype(np.int64) & 1) * pj[..., _BOND]  # in units, odd courses shifted
        joint = ((rows - row) * p * pj[..., _COURSE_HEIGHT] < 1.6) | ((units - np.floor(units)) * p < 1.6)
        joint &= pj[..., _COURSES] > 0
        noise = 1 + 0.03 * rng.standard_normal(joint.shape, dtype=np.float32)
        light[box] = np.where(joint, pj[..., _MORTAR_LUM] * noise, light[box])
        chroma = np.concatenate([chroma, mortar_chroma])
        lookup = region.copy()
        lookup[box] = np.where(joint, n + region[box], region[box])  # index n + i = region i's mortar colour

    # Colour channel by channel: (H, W) gathers are much cheaper than one (H, W, 3) gather.
    image = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        channel = np.take(chroma[:, c], lookup)
        image[..., c] = np.clip(light * channel, 0, 255)
    return image, np.take(order, region).astype(np.int64)


def to_model_input(images: np.ndarray | Sequence[np.ndarray]):  # -> torch.Tensor
    """uint8 RGB (H, W, 3) or (B, H, W, 3) -> float32 (B, 3, H, W) with OFA's normalisation (x/255 - 0.5) / 0.5,
    the runtime's :func:`~ifseg_deploy.preprocessing.normalize` (scenes are made at the model's input size)."""
    import torch

    from ..preprocessing import normalize

    arr = np.asarray(images if isinstance(images, np.ndarray) else np.stack(list(images)))
    if arr.ndim == 3:
        arr = arr[None]
    return torch.from_numpy(np.stack([normalize(image) for image in arr]))


class SyntheticScenes(Sequence):
    """Scenes ``start .. start + num_scenes - 1`` of a split; item ``i`` is ``make_scene(seed_i, size, ...)``.

    The default split, "test", never overlaps the seeds any training uses (see the module docstring).
    """

    def __init__(self, num_scenes: int = 64, size: tuple[int, int] = (256, 256),
                 categories: Sequence[str] | None = None, split: str = "test", start: int = 0,
                 num_regions: int | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        seeds = SPLITS[split]
        if num_scenes < 0 or start < 0 or start + num_scenes > len(seeds):
            raise ValueError(f"scenes {start}..{start + num_scenes} do not fit the {split} split")
        _resolve(categories)
        self.split = split
        self.size = (int(size[0]), int(size[1]))
        self.class_names: list[str] = list(DEFAULT_CATEGORIES if categories is None else categories)
        self.seeds = seeds[start:start + num_scenes]
        self.num_regions = num_regions

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, i):  # noqa: ANN001 - Sequence protocol (int or slice)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return make_scene(self.seeds[i], self.size, self.class_names, self.num_regions)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return (f"SyntheticScenes({len(self)} {self.split} scenes, size={self.size}, "
                f"classes={self.class_names})")
