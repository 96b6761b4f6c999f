"""The procedural world: determinism, exact masks, appearance statistics per concept, seed split, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ifseg_deploy.synthetic.world import (
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
        make_scene(0, (8, 8), categories=["sky", "lava"])
    with pytest.raises(ValueError):
        make_scene(0, (8, 8), categories=["sky", "sky"])


def test_mask_is_exact_painting_follows_regions():
    """Each concept is painted with its own statistics right up to the region boundary: pixel colours of a
    class, averaged over its whole area, match the concept's mean colour (within the per-region jitter)."""
    sums = {c: [] for c in DEFAULT_CATEGORIES}
    for seed in range(30):
        img, mask = make_scene(seed, (96, 96))
        for k, name in enumerate(DEFAULT_CATEGORIES):
            if (mask == k).sum() > 200:
                sums[name].append(img[mask == k].astype(float).mean(0))
    for name, means in sums.items():
        assert means, name
        got = np.mean(means, 0)
        want = np.array(CONCEPTS[name].color)
        if CONCEPTS[name].pattern == "bricks":  # light mortar joints raise the average
            want = 0.7 * want + 0.3 * np.array(CONCEPTS[name].mortar)
        assert np.abs(got - want).max() < 30, (name, got, want)


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
