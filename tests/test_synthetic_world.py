"""The procedural world: determinism, exact masks, appearance statistics per concept, seed split, speed."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time

import numpy as np
import pytest

from ifseg_deploy.synthetic.world import (
    ALL_CATEGORIES,
    CONCEPTS,
    DEFAULT_CATEGORIES,
    SPLITS,
    TEST_SEEDS,
    TRAIN_SEEDS,
    VALIDATION_SEEDS,
    SyntheticScenes,
    make_scene,
    to_model_input,
)


def test_scene_shapes_types_and_determinism():
    img, mask = make_scene(7, (96, 130))
    assert img.shape == (96, 130, 3) and img.dtype == np.uint8
    assert mask.shape == (96, 130) and mask.dtype == np.int64
    assert mask.min() >= 0 and mask.max() < len(DEFAULT_CATEGORIES)
    img2, mask2 = make_scene(7, (96, 130))
    assert np.array_equal(img, img2) and np.array_equal(mask, mask2)
    img3, _ = make_scene(8, (96, 130))
    assert not np.array_equal(img, img3)


@pytest.mark.parametrize("size", [(1, 1), (17, 5), (64, 64), (300, 200)])
def test_any_size(size):
    img, mask = make_scene(3, size)
    assert img.shape[:2] == size == mask.shape


def test_regions_and_concept_assignment():
    # Regions take concepts from a shuffled list: with n <= K regions every region is a different concept, so
    # n visible regions show n concepts (drawing with replacement would repeat one in 4 of 5 such scenes).
    for seed in range(20):
        _, mask = make_scene(seed, (128, 128), num_regions=5)
        assert len(np.unique(mask)) == 5, seed
    k = len(DEFAULT_CATEGORIES)
    for seed in range(5):  # n = K: every concept exactly once
        _, mask = make_scene(seed, (64, 64), num_regions=k)
        assert np.array_equal(np.unique(mask), np.arange(k)), seed
    _, mask = make_scene(0, (128, 128), num_regions=1)
    assert len(np.unique(mask)) == 1
    with pytest.raises(ValueError):
        make_scene(0, (32, 32), num_regions=0)


def test_category_subsets_index_the_given_list():
    cats = ["snow", "brick", "water"]
    img, mask = make_scene(11, (128, 128), categories=cats, num_regions=6)
    assert set(np.unique(mask)) <= {0, 1, 2}
    # The subset keeps the concepts' look: the "snow" pixels are bright, "water" pixels are blue.
    assert img[mask == 0].mean() > 200
    if (mask == 2).any():
        water = img[mask == 2].astype(float).mean(0)
        assert water[2] > water[0] + 50
    with pytest.raises(ValueError):
        make_scene(0, (8, 8), categories=["sky", "giraffe"])
    with pytest.raises(ValueError):
        make_scene(0, (8, 8), categories=["sky", "sky"])


def test_mask_is_exact_painting_follows_regions():
    """Each concept is painted with its own statistics right up to the region boundary: pixel colours of a
    class, averaged over its whole area, match the concept's mean colour (within the per-region jitter)."""
    sums = {c: [] for c in ALL_CATEGORIES}
    for seed in range(40):
        img, mask = make_scene(seed, (96, 96), categories=ALL_CATEGORIES)
        for k, name in enumerate(ALL_CATEGORIES):
            if (mask == k).sum() > 200:
                sums[name].append(img[mask == k].astype(float).mean(0))
    for name, means in sums.items():
        assert means, name
        got = np.mean(means, 0)
        c = CONCEPTS[name]
        want = np.array(c.color)
        if c.pattern in ("bricks", "tiles"):  # light joints raise the average: 1.6 px lines across and along
            courses = 2 if c.pattern == "bricks" else 1
            joints = 1 - (1 - 1.6 * courses / c.period) * (1 - 1.6 / c.period)
            want = (1 - joints) * want + joints * np.array(c.mortar)
        assert np.abs(got - want).max() < 30, (name, got, want)


def _look(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour and texture energy (grey-level std, mean |gradient| down, across and diagonal) of one
    concept, over a few single-region scenes."""
    colours, textures = [], []
    for seed in range(4):
        img, _ = make_scene(seed, (96, 96), categories=[name], num_regions=1)
        f = img.astype(float)
        g = f.mean(-1)
        colours.append(f.reshape(-1, 3).mean(0))
        textures.append([g.std(), np.abs(np.diff(g, axis=0)).mean(), np.abs(np.diff(g, axis=1)).mean(),
                         np.abs(g[1:, 1:] - g[:-1, :-1]).mean()])
    return np.mean(colours, 0), np.mean(textures, 0)


def test_all_sixteen_concepts_look_different():
    """Every pair of the 16 concepts differs clearly in mean colour (> 40 of 255, RGB distance) or in a
    texture energy (by a factor > 1.5), so each one is recognisable from a 16x16 cell."""
    assert len(ALL_CATEGORIES) == 16 and ALL_CATEGORIES[:8] == DEFAULT_CATEGORIES
    looks = {name: _look(name) for name in ALL_CATEGORIES}
    for a, b in itertools.combinations(ALL_CATEGORIES, 2):
        colour = np.linalg.norm(looks[a][0] - looks[b][0])
        texture = np.abs(np.log(looks[a][1] / looks[b][1])).max()
        assert colour > 40 or texture > np.log(1.5), (a, b, colour, texture)


def test_tiles_are_a_square_grid(monkeypatch):
    """Tile joints run straight through the region in both directions; brick joints only across the courses
    (running bond). Orientation jitter is switched off so that joints follow pixel rows and columns."""
    for name, columns in (("tile", True), ("brick", False)):
        monkeypatch.setitem(CONCEPTS, name, dataclasses.replace(CONCEPTS[name], angle_jitter=0.0))
        img, _ = make_scene(2, (128, 128), categories=[name], num_regions=1)
        joint = img.astype(float).mean(-1) > np.array(CONCEPTS[name].mortar).mean() - 25
        full_rows, full_cols = (joint.mean(1) > 0.95).mean(), (joint.mean(0) > 0.95).mean()
        assert full_rows > 0.04, (name, full_rows)  # 1-2 joint rows per course
        assert (full_cols > 0.04) == columns, (name, full_cols)
        assert 0.1 < joint.mean() < 0.35, (name, joint.mean())


def _texture_stats(img: np.ndarray) -> np.ndarray:
    g = img.astype(float).mean(-1)
    return np.array([g.std(), np.abs(np.diff(g, axis=0)).mean(), np.abs(np.diff(g, axis=1)).mean()])


def test_concepts_differ_in_texture_within_colour_families():
    """Pairs with similar colour (sky/water, grass/forest, sand/snow) are told apart by texture statistics."""
    stats = {}
    for name in DEFAULT_CATEGORIES:
        img, _ = make_scene(5, (128, 128), categories=[name], num_regions=1)
        stats[name] = _texture_stats(img)
    water, sky = stats["water"], stats["sky"]
    assert water[1] > 2 * sky[1]  # horizontal waves: strong vertical gradient; sky is smooth
    assert water[1] > 2 * water[2]  # ... and oriented
    assert stats["grass"][2] > 1.3 * stats["grass"][1]  # vertical blades: horizontal gradient dominates
    forest, road = stats["forest"], stats["road"]
    assert abs(forest[2] / forest[1] - 1) < 0.15  # foliage blotches have no orientation, unlike grass
    assert forest[0] / forest[1] > 1.4 > 1 > road[0] / road[1]  # large-scale blotches vs fine asphalt grain
    assert stats["sand"][2] > 2 * stats["snow"][2]  # grainy sand vs smooth snow


def test_variation_inside_a_concept():
    means = [make_scene(s, (64, 64), categories=["road"], num_regions=1)[0].reshape(-1, 3).mean(0)
             for s in range(12)]
    spread = np.ptp(np.array(means), axis=0)
    assert spread.max() > 8  # per-region brightness/hue jitter


# SHA-256 (first 16 hex digits) of image bytes + mask bytes, computed before the world grew to 16 concepts:
# the default world's scenes must stay bit-identical (the demo's figures and cached models depend on them).
_DEFAULT_SCENE_HASHES = {
    (0, (96, 130), None): "614e7847a3b713f0",
    (1, (96, 130), None): "ce22214355a736a9",
    (2, (96, 130), None): "63ad128bc975d77e",
    (3, (256, 256), None): "396946ed3a9a6b9b",
    (0, (96, 96), ("snow", "brick", "water")): "d6587e0bd4d98fed",
}


def test_default_world_scenes_are_unchanged():
    for (seed, size, cats), want in _DEFAULT_SCENE_HASHES.items():
        img, mask = make_scene(seed, size, categories=cats)
        got = hashlib.sha256(img.tobytes() + mask.tobytes()).hexdigest()[:16]
        assert got == want, (seed, size, cats)


def test_seed_split_is_disjoint_and_dataset_uses_it():
    ranges = [TRAIN_SEEDS, VALIDATION_SEEDS, TEST_SEEDS]
    for a in range(3):
        for b in range(a + 1, 3):
            assert ranges[a].stop <= ranges[b].start
    ds = SyntheticScenes(5, (48, 64))
    assert ds.split == "test" and len(ds) == 5 and ds.class_names == list(DEFAULT_CATEGORIES)
    assert all(s in TEST_SEEDS for s in ds.seeds)
    img, mask = ds[2]
    ref = make_scene(ds.seeds[2], (48, 64))
    assert np.array_equal(img, ref[0]) and np.array_equal(mask, ref[1])
    assert len(list(ds)) == 5 and len(ds[1:3]) == 2
    sub = SyntheticScenes(3, (32, 32), categories=["sky", "road"], split="validation", start=10)
    assert sub.num_classes == 2 and sub.seeds[0] == SPLITS["validation"].start + 10
    with pytest.raises(ValueError):
        SyntheticScenes(3, split="holdout")
    with pytest.raises(ValueError):
        SyntheticScenes(2, split="test", start=len(TEST_SEEDS) - 1)


def test_to_model_input_normalisation():
    img = np.zeros((4, 6, 3), np.uint8)
    img[0, 0] = (255, 0, 128)
    x = to_model_input(img)
    assert tuple(x.shape) == (1, 3, 4, 6)
    assert float(x[0, 0, 0, 0]) == 1.0 and float(x[0, 1, 0, 0]) == -1.0
    assert abs(float(x[0, 2, 0, 0]) - (128 / 255 - 0.5) / 0.5) < 1e-6
    assert tuple(to_model_input([img, img]).shape) == (2, 3, 4, 6)


def test_512_scene_is_fast():
    make_scene(0, (512, 512))
    best = min(_timed(lambda s=s: make_scene(s, (512, 512))) for s in range(5))
    # ~20 ms of CPU on the development machine; generous for shared CI cores.
    assert best < 0.1, best


def _timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start
