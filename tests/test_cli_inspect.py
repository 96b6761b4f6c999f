"""`ifseg-deploy inspect`: the user's first check of a checkpoint and category list."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers.bpe import write_tiny_bpe
from helpers.ofa import tiny_config, write_fairseq_checkpoint

from ifseg_deploy.cli import cli
from ifseg_deploy.model_dir import AdaptedModel
from ifseg_deploy.tokenizer import OFATokenizer


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    write_tiny_bpe(root / "BPE")
    rows = OFATokenizer.from_dir(root / "BPE").num_embeddings
    return write_fairseq_checkpoint(root / "ofa_random.pt", tiny_config(rows), seed=3)


def test_inspect_reports_and_saves(ckpt, tmp_path):
    out = tmp_path / "unadapted"
    res = CliRunner().invoke(cli, ["inspect", str(ckpt), "-c", "floor, wall, person", "--save", str(out)])
    assert res.exit_code == 0, res.output
    assert "fairseq layout" in res.output and "initialised" in res.output
    assert "'wall':" in res.output
    assert AdaptedModel.from_pretrained(out).categories == ["floor", "wall", "person"]


def test_inspect_categories_file(ckpt, tmp_path):
    f = tmp_path / "cats.txt"
    f.write_text("# my robot's world\nfloor\n\nwall\n")
    res = CliRunner().invoke(cli, ["inspect", str(ckpt), "--categories-file", str(f)])
    assert res.exit_code == 0, res.output
    assert "'floor':" in res.output and "'wall':" in res.output


@pytest.mark.parametrize("args, message", [
    (["-c", "floor, Floor"], "uplicate"),
    (["-c", "floor", "--arch", "base"], "'base' was asked for"),
    ([], "exactly one of --categories or --categories-file"),
])
def test_inspect_refusals_write_nothing(ckpt, tmp_path, args, message):
    out = tmp_path / "never"
    res = CliRunner().invoke(cli, ["inspect", str(ckpt), *args, "--save", str(out)])
    assert res.exit_code != 0
    assert message in res.output
    assert not out.exists()
