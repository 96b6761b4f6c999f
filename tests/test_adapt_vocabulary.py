"""Open-vocabulary adaptation (issue 13, item 1): per-sample vocabularies, padded prompts, resumption, and the
model directory it writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.bpe import CATEGORY_WORDS, write_tiny_bpe
from helpers.ofa import tiny_config, write_fairseq_checkpoint

from ifseg_deploy.adapt import AdaptConfig, adapt
from ifseg_deploy.adapt.vocabulary import VocabularyForward, VocabularyMaps, check_prompt_fits
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.modeling.encoder import PAD_ID
from ifseg_deploy.modeling.segofa import MASKED_LOGIT
from ifseg_deploy.runtime.segmenter import Segmenter
from ifseg_deploy.tokenizer import OFATokenizer

VOCAB = [w for w in CATEGORY_WORDS if w not in ("unknown", "concrete")]  # 15 single-word names
CATS = ["floor", "wall", "person"]


def fast_config(**kw) -> AdaptConfig:
    base = dict(steps=4, batch_size=3, lr=3e-3, wordmap_size=8, grid_max=8, target_size=32, checkpoint_every=2,
                log_every=2, seed=5, vocabulary=VOCAB, vocab_min=2, vocab_max=6)
    return AdaptConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("adapt-vocab")
    write_tiny_bpe(root / "BPE")
    rows = OFATokenizer.from_dir(root / "BPE").num_embeddings
    cfg = tiny_config(rows, d_model=32, ffn_dim=64, heads=2, encoder_layers=1, decoder_layers=1)
    return write_fairseq_checkpoint(root / "ofa_random.pt", cfg, seed=11)


@pytest.fixture(scope="module")
def start(ckpt) -> AdaptedModel:
    return AdaptedModel.unadapted_from_ofa(ckpt, CATS)


def _maps(tok: OFATokenizer, seed: int = 0, bounds=(2, 6)) -> VocabularyMaps:
    prefix = [tok.bos_id, *tok.encode_words("what is the segmentation map of the image? object:")]
    return VocabularyMaps(tok.name_tokens(VOCAB), prefix, [*tok.encode_words("unknown"), tok.eos_id], bounds,
                          grid_max=8, seed=seed)


def test_each_sample_gets_its_own_vocabulary_prompt_and_targets(start):
    tok = start.tokenizer
    grid, sizes, local, subset, valid, src = _maps(tok).sample(64)
    counts = valid.sum(1)
    assert counts.min() == 2 and counts.max() == 6 and len(set(counts.tolist())) == 5
    for b in range(8):
        m = int(counts[b])
        names = [VOCAB[i] for i in subset[b, :m].tolist()]
        assert len(set(names)) == m  # without replacement
        want = tok.prompt_ids(names)
        assert src[b, :len(want)].tolist() == want and (src[b, len(want):] == PAD_ID).all()
        assert local[b].max() < m and torch.equal(grid[b], subset[b][local[b]])
    # the order of the names is random: the first name is not always the smallest id
    assert (subset[:, 0] > subset[:, 1]).any() and (subset[:, 0] < subset[:, 1]).any()
    # every name of the vocabulary is drawn
    assert set(subset[valid].tolist()) == set(range(len(VOCAB)))


def test_a_padded_batch_equals_the_samples_run_alone(start):
    model = start.model.eval()
    tok = start.tokenizer
    table = model.class_embeddings(tok.name_tokens(VOCAB))
    forward = VocabularyForward(model, fast_config(), table).eval()
    batch = _maps(tok, seed=4).sample(4)
    lengths = batch[-1].ne(PAD_ID).sum(1)
    assert len(set(lengths.tolist())) > 1  # prompts of different lengths: some are padded
    with torch.no_grad():
        together = forward(*batch)
        for b in range(4):
            m, lt = int(batch[4][b].sum()), int(lengths[b])
            one = [x[b:b + 1] for x in batch]
            one[3], one[4], one[5] = one[3][:, :m], one[4][:, :m], one[5][:, :lt]  # no padding at all
            alone = forward(*one)
            torch.testing.assert_close(together[b, :m], alone[0], atol=2e-5, rtol=1e-4)
            assert (together[b, m:] == MASKED_LOGIT).all()


def test_resume_is_bit_exact_and_the_model_records_its_vocabulary(ckpt, tmp_path):
    cfg = fast_config()
    adapt(ckpt, CATS, tmp_path / "straight", cfg, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        adapt(ckpt, CATS, tmp_path / "resumed", cfg, progress=False, on_step=_crash_at(3))
    adapt(ckpt, CATS, tmp_path / "resumed", cfg, progress=False, resume=True)
    a = AdaptedModel.from_pretrained(tmp_path / "straight")
    b = AdaptedModel.from_pretrained(tmp_path / "resumed")
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.open_vocabulary and a.categories == CATS
    assert a.vocabulary["names"] == VOCAB and a.vocabulary["subset_size"] == [2, 6]
    # it accepts any names at run time, a per-vocabulary model does not
    seg = Segmenter.from_pretrained(tmp_path / "straight", categories=["sky", "tree", "brick"])
    assert seg.class_names == ["sky", "tree", "brick"]


def test_bad_vocabularies_are_refused_before_anything_is_written(ckpt, tmp_path):
    for kw, message in ((dict(vocabulary=["sky"]), "at least 2"), (dict(vocab_min=5, vocab_max=3), "vocab_min"),
                        (dict(vocabulary=["sky", "Sky"]), "duplicate"),
                        (dict(vocabulary=["sky", "жжж"]), "<unk>")):
        with pytest.raises(ValueError, match=message):
            adapt(ckpt, CATS, tmp_path / "m", fast_config(**kw), progress=False)
        assert not (tmp_path / "m").exists() and not (tmp_path / "m.partial").exists()
    with pytest.raises(ValueError, match="lower vocab_max"):
        check_prompt_fits([3] * 40, 16, 32, 100)


def _crash_at(n: int):
    def on_step(step: int, info: dict) -> None:
        if step == n:
            raise RuntimeError(f"simulated crash at step {step}")
    return on_step


def test_builtin_vocabularies():
    from ifseg_deploy.evaluation.classnames import ADE20K_150, COCO_STUFF_171
    from ifseg_deploy.evaluation.vocabularies import load_vocabulary
    from ifseg_deploy.tokenizer import name_key

    both = load_vocabulary("ade150+coco171")
    keys = [name_key(n) for n in both]
    assert len(keys) == len(set(keys))  # no name twice ("wall", "sky", "person", ... are in both lists)
    assert set(keys) == {name_key(n) for n in ADE20K_150 + COCO_STUFF_171} and len(both) < 150 + 171
    assert load_vocabulary("ade150") == ADE20K_150


def test_cli_adapt_with_a_vocabulary_file(ckpt, tmp_path):
    import json

    from click.testing import CliRunner

    from ifseg_deploy.cli import cli

    (tmp_path / "names.txt").write_text("# training names\n" + "\n".join(VOCAB) + "\n")
    common = ["adapt", "--checkpoint", str(ckpt), "--steps", "1", "--batch-size", "2", "--wordmap-size", "8",
              "--grid-max", "8", "--target-size", "16", "--quiet", "--vocab-max", "4"]
    ok = CliRunner().invoke(cli, [*common, "--vocabulary", str(tmp_path / "names.txt"), "--out", str(tmp_path / "m")])
    assert ok.exit_code == 0, ok.output
    conf = json.loads((tmp_path / "m" / "config.json").read_text())
    assert conf["categories"] == VOCAB[:4]  # no -c: the first --vocab-max names
    assert conf["metadata"]["vocabulary"] == {"mode": "open", "names": VOCAB, "subset_size": [2, 4]}
    bad = CliRunner().invoke(cli, [*common, "--vocabulary", "ade151", "--out", str(tmp_path / "n")])
    assert bad.exit_code == 2 and "neither a file nor one of the built-in lists" in bad.output, bad.output
    assert not (tmp_path / "n").exists()
