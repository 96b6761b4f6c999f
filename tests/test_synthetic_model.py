"""The world model: vocabulary, build, cache, loading through the real OFA loader, and the property it exists
for (image tokens near their concept's words) measured on held-out scenes.

A reduced recipe (60 training steps, ~10 s) is built once per session. Over build seeds 0-9 it gave
alignment mIoU 0.889-0.914 and unadapted mIoU 0.014-0.102 (bound 1.5/8 = 0.1875) on 24 test scenes.
The 16-concept world (session fixture ``open_world`` in conftest.py, the same reduced recipe, ~11 s of CPU) gave
alignment mIoU 0.836, lowest concept IoU 0.74, and 0.926 with four of the names only (build seed 0; seeds 1-4:
0.80-0.82, lowest 0.64-0.73, 0.91-0.92).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from helpers.world import FAST_WORLD_STEPS

import ifseg_deploy.version as version_module
from ifseg_deploy import AdaptedModel
from ifseg_deploy.synthetic import cache as cache_mod
from ifseg_deploy.synthetic import tiny_vlm
from ifseg_deploy.synthetic.cache import (
    MANIFEST_NAME,
    build_or_load_world_model,
    default_cache_root,
    world_cache_entry,
)
from ifseg_deploy.synthetic.evaluation import evaluate_alignment, evaluate_model, miou_from_confusion
from ifseg_deploy.synthetic.tiny_vlm import CHECKPOINT_NAME, WorldRecipe, build_world_model, world_config
from ifseg_deploy.synthetic.vocab import WORD_PIECES, world_tokenizer, world_words, write_bpe_files
from ifseg_deploy.synthetic.world import ALL_CATEGORIES, DEFAULT_CATEGORIES, TEST_SEEDS, SyntheticScenes
from ifseg_deploy.tokenizer import DEFAULT_PROMPT, OFATokenizer

FAST = WorldRecipe(**FAST_WORLD_STEPS)  # the recipe of conftest's session fixture ``fast_world``
# Just enough to exercise building and caching (not a useful model).
TINY = WorldRecipe(steps=2, batch_size=2, pool_scenes=2, pool_size=128, crop=128)


@pytest.fixture(autouse=True)
def _one_thread():
    # These ops are too small for intra-op threads; on shared 2-core CI machines two threads ran ~10x slower.
    with tiny_vlm.torch_threads(1):
        yield


@pytest.fixture(scope="session")
def fast_model(fast_world) -> AdaptedModel:
    return AdaptedModel.unadapted_from_ofa(fast_world[0], list(DEFAULT_CATEGORIES))


@pytest.fixture(scope="session")
def held_out() -> SyntheticScenes:
    return SyntheticScenes(24, (256, 256))


# ---- vocabulary ---------------------------------------------------------------------------------------------------

def test_vocabulary_splits_and_files_round_trip(tmp_path):
    tok = world_tokenizer()
    for word in world_words():
        assert tuple(tok.pieces(word)) == WORD_PIECES[word]
    assert WORD_PIECES["forest"] == ("\u0120for", "est")  # one multi-piece name: class row = mean of two
    assert all(len(WORD_PIECES[c]) == 1 for c in DEFAULT_CATEGORIES if c != "forest")
    assert tok.unk_id not in tok.encode_words("giraffe Zürich 東京 ?!")  # every byte is a piece
    files = write_bpe_files(tmp_path)
    assert set(files) == {"encoder.json", "vocab.bpe", "dict.txt", "tokenizer_config.json"}
    loaded = OFATokenizer.from_dir(tmp_path)
    assert (loaded.num_codes, loaded.num_bins) == (16, 10)
    assert loaded.num_embeddings == tok.num_embeddings
    cats = list(DEFAULT_CATEGORIES)
    assert loaded.prompt_ids(cats, DEFAULT_PROMPT) == tok.prompt_ids(cats, DEFAULT_PROMPT)
    assert loaded.name_tokens(cats) == tok.name_tokens(cats)
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < 20_000


# The default world's vocabulary files (SHA-256, first 16 hex digits) as they were before the world grew to 16
# concepts: every default-world model, and so the demo, depends on them staying byte-identical.
_DEFAULT_VOCABULARY_FILES = {"encoder.json": "1a2a8048f70da324", "vocab.bpe": "9d75250963d9f10e",
                             "dict.txt": "0a11d30938246b19"}


def test_default_vocabulary_is_unchanged(tmp_path):
    write_bpe_files(tmp_path)
    for name, want in _DEFAULT_VOCABULARY_FILES.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()[:16] == want, name
    tok = world_tokenizer()
    assert tok.num_embeddings == 360
    assert tok.name_tokens(list(DEFAULT_CATEGORIES)) == [[303], [308], [312], [315], [320], [323], [327], [330, 332]]
    assert world_tokenizer(["sky", "road"]) is tok  # every world within the default eight shares it


def test_open_vocabulary_appends_the_new_names(tmp_path):
    default, full = world_tokenizer(), world_tokenizer(ALL_CATEGORIES)
    words = world_words(ALL_CATEGORIES)
    assert words[:len(world_words())] == world_words() and set(ALL_CATEGORIES) <= set(words)
    assert full.num_embeddings > default.num_embeddings
    cats = list(DEFAULT_CATEGORIES)  # appended: the default words keep their ids
    assert full.name_tokens(cats) == default.name_tokens(cats)
    assert full.prompt_ids(cats, DEFAULT_PROMPT) == default.prompt_ids(cats, DEFAULT_PROMPT)
    for word in words:
        assert tuple(full.pieces(word)) == WORD_PIECES[word]
    assert WORD_PIECES["carpet"] == ("\u0120car", "pet")  # the new multi-piece name
    assert len(default.pieces("metal")) > 1  # only byte pieces in the default world: not one of its words
    # The vocabulary depends on which concepts a world has, not on their order.
    assert world_tokenizer(["lava", "sky", "tile"]) is world_tokenizer(["tile", "lava", "sky"])
    with pytest.raises(ValueError):
        world_words(["sky", "giraffe"])
    write_bpe_files(tmp_path, ALL_CATEGORIES)
    loaded = OFATokenizer.from_dir(tmp_path)
    assert loaded.num_embeddings == full.num_embeddings
    assert loaded.name_tokens(list(ALL_CATEGORIES)) == full.name_tokens(list(ALL_CATEGORIES))


def test_concept_names_tokenize_in_the_real_ofa_vocabulary(real_bpe_dir):
    """All 16 names are ordinary words of the real OFA (GPT-2) vocabulary: one or two known pieces each."""
    real = OFATokenizer.from_dir(real_bpe_dir)
    for name, tokens in zip(ALL_CATEGORIES, real.name_tokens(list(ALL_CATEGORIES)), strict=True):
        assert 1 <= len(tokens) <= 2 and real.unk_id not in tokens, (name, real.pieces(name))


# ---- recipe and architecture --------------------------------------------------------------------------------------

def test_recipe_key_and_validation(monkeypatch):
    base = WorldRecipe()
    base_key = base.key()
    assert base_key == WorldRecipe().key()
    assert len({base.key(), WorldRecipe(seed=1).key(), WorldRecipe(steps=10).key(),
                WorldRecipe(categories=("sky", "road")).key()}) == 4
    monkeypatch.setattr(version_module, "__version__", "99.0")
    assert WorldRecipe().key() != base_key  # a new package version builds a new entry
    with pytest.raises(ValueError):
        WorldRecipe(categories=("sky", "giraffe"))
    with pytest.raises(ValueError):
        WorldRecipe(categories=("sky",))
    with pytest.raises(ValueError):
        WorldRecipe(crop=100)
    with pytest.raises(ValueError):
        WorldRecipe(steps=0)


def test_world_config_is_a_small_ofa():
    cfg = world_config()
    assert cfg.resnet_type == "resnet-mini" and cfg.resnet_channels == 256
    assert (cfg.d_model, cfg.heads, cfg.encoder_layers, cfg.decoder_layers) == (64, 4, 2, 2)
    assert cfg.vocab_rows == world_tokenizer().num_embeddings
    open_recipe = WorldRecipe.open_vocabulary(steps=10)
    assert open_recipe.categories == ALL_CATEGORIES and open_recipe.steps == 10
    assert WorldRecipe.open_vocabulary().key() != WorldRecipe().key()
    assert world_config(open_recipe).vocab_rows == world_tokenizer(ALL_CATEGORIES).num_embeddings > cfg.vocab_rows


def test_build_trains_only_the_image_side_and_is_deterministic():
    a, stats = build_world_model(TINY, progress=False)
    b, _ = build_world_model(TINY, progress=False)
    c, _ = build_world_model(WorldRecipe(**{**TINY.to_dict(), "steps": 3}), progress=False)
    assert set(stats) >= {"final_loss_ema", "final_cell_accuracy_ema", "train_seconds"}
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same recipe, same weights
    image_side = ("encoder.embed_images.", "encoder.image_proj.")
    changed = {k for k in sa if not torch.equal(sa[k], sc[k])}
    assert changed and all(k.startswith(image_side) for k in changed)  # one more step moves only these
    assert "encoder.embed_images.conv1.weight" in changed and "encoder.image_proj.weight" in changed
    # Afterwards everything is frozen again as SegOFA expects.
    for module in (a.encoder.embed_images, a.encoder.image_proj, a.encoder.embed_tokens):
        assert not any(p.requires_grad for p in module.parameters())
    assert a.encoder.layers[0].fc1.weight.requires_grad
    assert float(a.encoder.embed_tokens.weight[1].abs().sum()) == 0.0  # fairseq's zero <pad> row


# ---- checkpoint, loader and cache ---------------------------------------------------------------------------------

def test_checkpoint_loads_through_the_real_ofa_loader(fast_world, fast_model):
    path, cache = fast_world
    assert path.name == CHECKPOINT_NAME and path.parent == world_cache_entry(FAST, cache)
    for name in ("encoder.json", "vocab.bpe", "dict.txt", "tokenizer_config.json", MANIFEST_NAME):
        assert (path.parent / name).is_file()
    assert path.stat().st_size < 5 * 2**20
    report = fast_model.metadata["load_report"]
    assert "fairseq layout" in report and "UNEXPECTED" not in report
    cfg = fast_model.model.cfg
    assert (cfg.resnet_type, cfg.resnet_width, cfg.d_model) == ("resnet-mini", 16, 64)
    assert fast_model.model.num_classes == len(DEFAULT_CATEGORIES)
    manifest = json.loads((path.parent / MANIFEST_NAME).read_text())
    assert manifest["key"] == FAST.key() and manifest["recipe"]["steps"] == 60
    assert CHECKPOINT_NAME in manifest["files"] and "torch" in manifest["versions"]


def test_cache_hit_does_not_rebuild(fast_world, monkeypatch):
    path, cache = fast_world

    def fail(*a, **k):
        raise AssertionError("rebuilt a valid cache entry")

    monkeypatch.setattr(cache_mod, "build_world_checkpoint", fail)
    assert build_or_load_world_model(cache, recipe=FAST) == path


def test_corrupt_entry_is_rebuilt(tmp_path):
    path = build_or_load_world_model(tmp_path, recipe=TINY, progress=False)
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated, as by a full disk
    again = build_or_load_world_model(tmp_path, recipe=TINY, progress=False)
    assert again == path and again.read_bytes() == good  # deterministic rebuild
    (path.parent / MANIFEST_NAME).write_text("{not json")
    assert build_or_load_world_model(tmp_path, recipe=TINY, progress=False).read_bytes() == good
    assert [p.name for p in path.parent.parent.iterdir()] == [TINY.key()]  # no staging left behind
    with pytest.raises(ValueError):
        build_or_load_world_model(tmp_path, seed=3, recipe=TINY)


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("IFSEG_DEPLOY_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "ifseg-deploy"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "ifseg-deploy"
    monkeypatch.setenv("IFSEG_DEPLOY_CACHE", str(tmp_path / "mine"))
    assert default_cache_root() == tmp_path / "mine"
    assert world_cache_entry(FAST) == tmp_path / "mine" / "world" / FAST.key()


# ---- the property, measured on scenes no training saw -------------------------------------------------------------

def test_metric_against_hand_computed_values():
    target = np.array([[0, 0, 1, 1], [2, 2, 2, 2]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 0]])
    conf = np.zeros((4, 4), np.int64)
    np.add.at(conf, (target.ravel(), pred.ravel()), 1)  # rows = true class, columns = predicted
    res = miou_from_confusion(torch.from_numpy(conf))
    # class 0: I=1, U=2+3-1=4; class 1: I=2, U=2+3-2=3; class 2: I=2, U=4+2-2=4; class 3 never occurs (excluded)
    assert abs(res["miou"] - (1 / 4 + 2 / 3 + 2 / 4) / 3) < 1e-9
    assert res["pixel_accuracy"] == 5 / 8


def test_image_tokens_lie_near_their_concepts_words(fast_model, held_out):
    assert all(s in TEST_SEEDS for s in held_out.seeds)
    res = evaluate_alignment(fast_model.model, held_out)
    assert res["miou"] >= 0.75, res["miou"]
    assert res["pixel_accuracy"] >= 0.85, res["pixel_accuracy"]


def test_unadapted_model_is_near_chance(fast_model, held_out):
    res = evaluate_model(fast_model.model, held_out)
    assert res["miou"] <= 1.5 / len(DEFAULT_CATEGORIES), res["miou"]


def test_open_world_aligns_all_sixteen_concepts(open_world):
    """The 16-concept world model: every concept's image tokens lie nearest its own name (chance IoU ~ 1/16),
    also when the model is loaded with a few of the names only, as run-time vocabularies will."""
    model = AdaptedModel.unadapted_from_ofa(open_world, list(ALL_CATEGORIES)).model
    res = evaluate_alignment(model, SyntheticScenes(24, (256, 256), categories=ALL_CATEGORIES))
    assert res["miou"] >= 0.75, res["miou"]
    worst = min(zip(res["iou"], ALL_CATEGORIES))
    assert worst[0] >= 0.6, worst
    few = ["lava", "sky", "carpet", "dirt"]
    model = AdaptedModel.unadapted_from_ofa(open_world, few).model
    assert evaluate_alignment(model, SyntheticScenes(8, (256, 256), categories=few))["miou"] >= 0.8


@pytest.mark.slow
def test_default_build_meets_its_numbers(tmp_path):
    """The default recipe (what the demo uses), on 32 held-out 512x512 scenes."""
    path = build_or_load_world_model(tmp_path, progress=False)
    model = AdaptedModel.unadapted_from_ofa(path, list(DEFAULT_CATEGORIES)).model
    scenes = SyntheticScenes(32, (512, 512))
    assert evaluate_alignment(model, scenes)["miou"] >= 0.9
    assert evaluate_model(model, scenes)["miou"] <= 1.5 / len(DEFAULT_CATEGORIES)
