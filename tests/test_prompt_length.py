"""A category list whose prompt is longer than the encoder's text positions: where the limit lies, and that every
entry point (load_ofa / from_ofa / from_pretrained, `inspect`, `adapt`) refuses it before reading weights or
writing anything, with the token count, the limit and how many names fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers.bpe import write_tiny_bpe
from helpers.ofa import tiny_config, write_fairseq_checkpoint

from ifseg_deploy.adapt import AdaptConfig, adapt
from ifseg_deploy.checkpoints.loader import load_ofa
from ifseg_deploy.cli import cli
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.modeling.position import max_text_tokens, token_bucket_index
from ifseg_deploy.modeling.segofa import SegOFA
from ifseg_deploy.tokenizer import OFATokenizer, PromptTooLongError

#: 1200 distinct names the tiny vocabulary knows the first word of ("floor"; the digits may be <unk>).
MANY = [f"floor {i}" for i in range(1200)]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prompt")
    write_tiny_bpe(root / "BPE")
    rows = OFATokenizer.from_dir(root / "BPE").num_embeddings
    cfg = tiny_config(rows, d_model=16, ffn_dim=32, heads=2, encoder_layers=1, decoder_layers=1,
                      resnet_type="resnet-mini", resnet_width=8)
    return write_fairseq_checkpoint(root / "ofa.pt", cfg, seed=5), root / "BPE"


@pytest.fixture
def corrupt(world, tmp_path) -> Path:
    """A checkpoint that fails as soon as its weights are read: a refusal that names the prompt came first."""
    path = tmp_path / "ofa_corrupt.pt"
    path.write_bytes(world[0].read_bytes()[:5000])
    return path


def _categories_file(tmp_path: Path, names: list[str]) -> Path:
    f = tmp_path / "names.txt"
    f.write_text("\n".join(names) + "\n")
    return f


@pytest.mark.parametrize("positions", [1024, 512])
def test_limit_is_the_last_length_the_relative_table_covers(positions):
    """L = max_text_tokens(P) reaches the last of the 2*256-1 rows of the text relative table; L + 1 goes past."""
    limit = max_text_tokens(positions)
    assert limit == positions
    assert int(token_bucket_index(limit, 256, positions).max()) == 2 * 256 - 2
    assert int(token_bucket_index(limit + 1, 256, positions).max()) > 2 * 256 - 2


def test_a_prompt_at_the_limit_runs_and_one_token_more_is_refused():
    cfg = tiny_config(400, d_model=16, ffn_dim=32, heads=2, encoder_layers=1, decoder_layers=1,
                      resnet_type="resnet-mini", resnet_width=8, max_source_positions=300)
    model = SegOFA(cfg, num_classes=2).eval()
    limit = max_text_tokens(cfg.max_source_positions)
    ids = [0, *([7] * (limit - 2)), 2]
    model.set_prompt(ids, [[7], [8]])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 2, 2, 2)
        with pytest.raises(IndexError):  # what the guard prevents
            model(torch.zeros(1, 3, 32, 32), torch.tensor([[0, *([7] * (limit - 1)), 2]]))
    with pytest.raises(ValueError, match=f"{limit + 1} tokens, the encoder {limit} text positions"):
        model.set_prompt([0, *([7] * (limit - 1)), 2], [[7], [8]])


def test_count_and_names_that_fit_agree_with_prompt_ids(world):
    tok = OFATokenizer.from_dir(world[1])
    names = MANY[:50]
    n = len(tok.prompt_ids(names))
    assert tok.check_prompt_length(names, n) == n
    limit = len(tok.prompt_ids(names[:30]))  # exactly the first 30 names
    with pytest.raises(PromptTooLongError) as info:
        tok.check_prompt_length(names, limit)
    e = info.value
    assert (e.tokens, e.limit, e.fit) == (n, limit, 30)
    assert len(tok.prompt_ids(names[:e.fit])) <= limit < len(tok.prompt_ids(names[:e.fit + 1]))
    assert f"{n} tokens long" in str(e) and f"{limit} text positions" in str(e)
    assert f"the first {e.fit} names fit" in str(e)


def test_real_vocabulary_1200_names(real_bpe_dir):
    tok = OFATokenizer.from_dir(real_bpe_dir)
    names = [f"object class {i}" for i in range(1200)]
    with pytest.raises(PromptTooLongError) as info:
        tok.check_prompt_length(names, max_text_tokens(1024))
    e = info.value
    assert e.tokens == len(tok.prompt_ids(names)) > 1024 and e.limit == 1024
    assert len(tok.prompt_ids(names[:e.fit])) <= 1024 < len(tok.prompt_ids(names[:e.fit + 1]))


def test_loaders_refuse_before_reading_weights(world, corrupt, tmp_path):
    ckpt, bpe = world
    with pytest.raises(PromptTooLongError, match="names fit"):
        load_ofa(corrupt, MANY, bpe_dir=bpe)
    with pytest.raises(PromptTooLongError, match="names fit"):
        AdaptedModel.unadapted_from_ofa(corrupt, MANY, bpe_dir=bpe)
    # a saved model directory re-targeted to the long list: refused before model.safetensors is read
    model_dir = AdaptedModel.unadapted_from_ofa(ckpt, ["floor", "wall"], bpe_dir=bpe).save_pretrained(tmp_path / "m")
    (model_dir / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(PromptTooLongError, match="names fit"):
        AdaptedModel.from_pretrained(model_dir, categories=MANY)


def test_inspect_refuses_without_traceback(world, corrupt, tmp_path):
    names = _categories_file(tmp_path, MANY)
    out = tmp_path / "saved"
    res = CliRunner().invoke(cli, ["inspect", str(corrupt), "--bpe-dir", str(world[1]), "--categories-file",
                                   str(names), "--save", str(out)])
    assert res.exit_code == 1, res.output
    assert "1024 text positions" in res.output and "names fit" in res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, PromptTooLongError)
    assert not out.exists()


def test_adapt_refuses_before_anything_is_written(world, corrupt, tmp_path):
    names = _categories_file(tmp_path, MANY)
    out = tmp_path / "model"
    res = CliRunner().invoke(cli, ["adapt", "--checkpoint", str(corrupt), "--bpe-dir", str(world[1]),
                                   "--categories-file", str(names), "--out", str(out), "--steps", "2",
                                   "--quiet"])
    assert res.exit_code == 1, res.output
    assert "1024 text positions" in res.output and "names fit" in res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["names.txt", "ofa_corrupt.pt"]  # no model(.partial)/


def _fast() -> AdaptConfig:
    return AdaptConfig(steps=2, batch_size=1, wordmap_size=4, grid_max=4, target_size=16, log_every=1,
                       checkpoint_every=1, kernel="torch")


@pytest.mark.parametrize("what", ["long prompt", "corrupt checkpoint", "bad device", "missing cuda",
                                  "triton on cpu", "bad option"])
def test_adapt_checks_every_input_before_touching_out_partial(world, corrupt, tmp_path, monkeypatch, what):
    """A refused --overwrite run keeps the interrupted run in OUT.partial/ and writes no OUT."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the kernel tests may have set it
    ckpt, bpe = world
    out = tmp_path / "model"
    partial = tmp_path / "model.partial"
    partial.mkdir()
    (partial / "checkpoint.pt").write_bytes(b"an interrupted run's state")
    cats, kw, cfg = ["floor", "wall"], {}, _fast()
    if what == "long prompt":
        cats = MANY
    elif what == "corrupt checkpoint":
        ckpt = corrupt
    elif what == "bad device":
        kw["device"] = "gpu0"
    elif what == "missing cuda":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        kw["device"] = "cuda"
    elif what == "triton on cpu":
        cfg.kernel = "triton"
        kw["device"] = "cpu"
    else:
        cfg.grid_max = 9
    with pytest.raises(ValueError):  # PromptTooLongError, CheckpointError and the option errors all are
        adapt(ckpt, cats, out, cfg, bpe_dir=bpe, overwrite=True, progress=False, **kw)
    assert (partial / "checkpoint.pt").read_bytes() == b"an interrupted run's state"
    assert not out.exists()
