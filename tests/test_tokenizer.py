"""OFA English tokenizer: real OFA BPE files (when present) and a tiny self-made vocabulary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.bpe import UNK_WORD, WORDS, write_tiny_bpe

from ifseg_deploy.tokenizer import (
    DEFAULT_PROMPT,
    UNKNOWN_NAME,
    OFATokenizer,
    TokenizerError,
    parse_categories,
)

REAL_BPE = Path(__file__).resolve().parents[1].parent / "shared" / "ofa_bpe"

PROMPT_FAIRSEQ = [99, 16, 5, 2835, 1258, 5456, 9, 5, 2274, 116, 7626, 35]
PROMPT_GPT2 = [644, 318, 262, 10618, 341, 3975, 286, 262, 2939, 30, 2134, 25]
NAMES_GPT2 = {
    "giraffe": [37370, 21223],
    "frisbee": [1216, 271, 20963],
    "concrete wall": [10017, 3355],
    "tree": [5509],
    "grass": [8701],
    "unknown": [6439],
}


# ---- real OFA vocabulary ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real() -> OFATokenizer:
    if not all((REAL_BPE / n).is_file() for n in ("encoder.json", "vocab.bpe", "dict.txt")):
        pytest.skip(f"real OFA BPE files (encoder.json, vocab.bpe, dict.txt) not found in {REAL_BPE}")
    return OFATokenizer.from_bpe_dir(REAL_BPE)


@pytest.fixture(scope="module")
def fairseq_of_gpt2() -> dict[int, int]:
    lines = (REAL_BPE / "dict.txt").read_text(encoding="utf-8").splitlines()
    return {int(ln.split()[0]): i + 4 for i, ln in enumerate(lines) if ln.split()[0].isdigit()}


def test_real_prompt_ids(real):
    assert real.encode_words(DEFAULT_PROMPT) == PROMPT_FAIRSEQ
    assert real.encode_words(" " + UNKNOWN_NAME + "  ") == [4727]


def test_real_giraffe_two_pieces(real):
    assert real.pieces("giraffe") == ["Ġgir", "affe"]
    assert len(real.encode_words(" giraffe")) == 2


def test_real_gpt2_ids_map_through_dict(real, fairseq_of_gpt2):
    assert [fairseq_of_gpt2[g] for g in PROMPT_GPT2] == PROMPT_FAIRSEQ
    for name, gpt2 in NAMES_GPT2.items():
        assert real.encode_words(name) == [fairseq_of_gpt2[g] for g in gpt2], name
    expected = [[fairseq_of_gpt2[g] for g in v] for v in NAMES_GPT2.values()]
    assert real.name_tokens(list(NAMES_GPT2)) == expected


def test_real_layout(real):
    assert real.num_embeddings == 59457
    assert real.mask_id == 50264
    assert real.code_offset == 50265
    assert real.bin_offset == 50265 + 8192


def test_real_prompt_and_hf_round_trip(real, tmp_path):
    names = ["giraffe", "tree"]
    ids = real.prompt_ids(names)
    assert ids == [0, *PROMPT_FAIRSEQ, *real.encode_words("giraffe"), *real.encode_words("tree"), 4727, 2]
    files = real.save(tmp_path)
    assert sorted(files) == sorted(p.name for p in tmp_path.iterdir())
    back = OFATokenizer.from_dir(tmp_path)
    assert back.num_embeddings == 59457
    assert back.prompt_ids(names) == ids
    text = "a Frisbee, a 3D-printed t-shirt and 你好 über café!"
    assert back.encode_words(text) == real.encode_words(text)
    assert 3 not in real.encode_words(text)  # byte-level: nothing is unknown with the real vocabulary


# ---- tiny vocabulary -------------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path) -> tuple[OFATokenizer, dict]:
    info = write_tiny_bpe(tmp_path / "fs")
    return OFATokenizer.from_dir(tmp_path / "fs"), info


def test_fixture_deterministic(tmp_path):
    a = write_tiny_bpe(tmp_path / "a")
    b = write_tiny_bpe(tmp_path / "b")
    for name in a["files"]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["num_text_symbols"] == b["num_text_symbols"]
    assert (tmp_path / "a" / "vocab.bpe").read_text(encoding="utf-8").startswith("#version: 0.2\n")


def test_tiny_layouts_agree(tmp_path):
    fs_info = write_tiny_bpe(tmp_path / "fs")
    hf_info = write_tiny_bpe(tmp_path / "hf", layout="hf")
    fs = OFATokenizer.from_dir(tmp_path / "fs")
    hf = OFATokenizer.from_dir(tmp_path / "hf")
    assert fs_info["num_text_symbols"] == hf_info["num_text_symbols"] == fs.num_text_symbols
    assert hf.num_text_symbols == fs.num_text_symbols
    assert fs.num_embeddings == hf.num_embeddings == fs.num_text_symbols + 1 + 8192 + 1000
    assert json.loads((tmp_path / "hf" / "vocab.json").read_text())["<mask>"] == hf.mask_id
    for text in [DEFAULT_PROMPT, " ".join(WORDS), UNK_WORD, "giraffez  pallets?", "été 123"]:
        assert fs.encode_words(text) == hf.encode_words(text), text
    names = ["giraffe", "concrete wall", "person"]
    assert fs.prompt_ids(names) == hf.prompt_ids(names)


def test_tiny_pieces_known_and_unknown(tiny):
    tok, info = tiny
    ids = tok.encode_words(" ".join(info["words"]))
    assert ids and tok.unk_id not in ids
    assert all(4 <= i < info["num_text_symbols"] for i in ids)
    assert set(tok.encode_words(UNK_WORD)) == {tok.unk_id}
    # dict.txt is not the identity: it re-indexes the BPE ids.
    encoder = json.loads((info["dir"] / "encoder.json").read_text())
    assert any(tok.encode_words(w) != [encoder[p] + 4 for p in tok.pieces(w)] for w in info["words"])


def test_tiny_extra_words(tmp_path):
    base = OFATokenizer.from_dir(write_tiny_bpe(tmp_path / "b")["dir"])
    assert base.unk_id in base.encode_words("zebra quartz box")
    info = write_tiny_bpe(tmp_path / "x", extra_words=["zebra", "quartz box"])
    tok = OFATokenizer.from_dir(tmp_path / "x")
    assert tok.unk_id not in tok.encode_words("zebra quartz box")
    assert tok.num_text_symbols > base.num_text_symbols
    assert tok.pieces("zebra giraffe") == base.pieces("zebra giraffe")
    assert info["words"][-3:] == ("zebra", "quartz", "box")
    assert set(tok.encode_words(UNK_WORD)) == {tok.unk_id}
    with pytest.raises(ValueError, match="UNK_WORD"):
        write_tiny_bpe(tmp_path / "y", extra_words=[UNK_WORD])


def test_tiny_prompt_structure(tiny):
    tok, _ = tiny
    names = ["giraffe", " concrete wall ", "sky"]
    ids = tok.prompt_ids(names)
    body = tok.encode_words(DEFAULT_PROMPT)
    per_name = tok.name_tokens(names)
    assert per_name[1] == tok.encode_words("concrete wall")
    assert ids == [0, *body, *[i for t in per_name for i in t], *tok.encode_words("unknown"), 2]
    custom = tok.prompt_ids(["sky"], prompt="what is the map?")
    assert custom[1 : 1 + len(tok.encode_words("what is the map?"))] == tok.encode_words("what is the map?")


@pytest.mark.parametrize("layout", ["fairseq", "hf"])
def test_save_round_trip(tmp_path, layout):
    write_tiny_bpe(tmp_path / "src", layout=layout)
    tok = OFATokenizer.from_dir(tmp_path / "src", num_codes=16, num_bins=10)
    files = tok.save(tmp_path / "out")
    assert set(files) == {p.name for p in (tmp_path / "out").iterdir()}
    back = OFATokenizer.from_dir(tmp_path / "out")
    assert (back.num_codes, back.num_bins, back.num_embeddings) == (16, 10, tok.num_embeddings)
    text = " ".join(WORDS) + f" {UNK_WORD} giraffez éa"
    assert back.encode_words(text) == tok.encode_words(text)
    assert back.prompt_ids(["giraffe", "sand"]) == tok.prompt_ids(["giraffe", "sand"])
    assert OFATokenizer.from_dir(tmp_path / "out", num_codes=4).num_codes == 4


def test_fixture_config(tmp_path):
    info = write_tiny_bpe(tmp_path, layout="hf", num_codes=8, num_bins=5)
    tok = OFATokenizer.from_dir(tmp_path)
    assert tok.num_embeddings == info["num_embeddings"] == info["num_text_symbols"] + 1 + 8 + 5


# ---- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ([], "empty"),
        ("wall", "list"),
        (["wall", "Wall "], "duplicate.*Wall"),
        (["concrete wall", "Concrete  Wall"], "duplicate"),
        (["wall", ""], "empty"),
        (["wall", "   "], "empty"),
        (["wall", "?!"], "'\\?!'.*no letter"),
        (["wall", None], "not a string"),
        (["wall", UNK_WORD], f"'{UNK_WORD}'.*<unk>"),
    ],
)
def test_bad_names(tiny, names, match):
    tok, _ = tiny
    with pytest.raises(TokenizerError, match=match):
        tok.name_tokens(names)
    with pytest.raises(TokenizerError, match=match):
        tok.prompt_ids(names)


def test_partly_unknown_name_is_kept(tiny):
    tok, _ = tiny
    ids = tok.name_tokens(["giraffez"])[0]
    assert tok.unk_id in ids and any(i != tok.unk_id for i in ids)


def test_missing_files(tmp_path):
    write_tiny_bpe(tmp_path)
    (tmp_path / "dict.txt").unlink()
    with pytest.raises(TokenizerError, match="missing dict.txt.*encoder.json"):
        OFATokenizer.from_dir(tmp_path)
    with pytest.raises(TokenizerError, match="missing vocab.json, merges.txt"):
        OFATokenizer.from_hf_dir(tmp_path)
    with pytest.raises(TokenizerError, match="not a directory"):
        OFATokenizer.from_dir(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match="missing encoder.json, vocab.bpe, dict.txt"):
        OFATokenizer.from_dir(tmp_path / "empty")


def test_missing_hf_file(tmp_path):
    write_tiny_bpe(tmp_path, layout="hf")
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(TokenizerError, match="missing merges.txt"):
        OFATokenizer.from_dir(tmp_path)


def test_chinese_vocab_refused(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n的\n", encoding="utf-8")
    for load in (OFATokenizer.from_dir, OFATokenizer.from_bpe_dir, OFATokenizer.from_hf_dir):
        with pytest.raises(TokenizerError, match="Chinese OFA.*English OFA"):
            load(tmp_path)


@pytest.mark.parametrize(
    ("layout", "name", "content", "match"),
    [
        ("fairseq", "encoder.json", '{"a": 1,', "encoder.json.*JSON"),
        ("fairseq", "encoder.json", '["a"]', "encoder.json.*JSON object"),
        ("fairseq", "dict.txt", "13 850\nbroken\n", "dict.txt:2"),
        ("fairseq", "dict.txt", "13 850\n13 5\n", "dict.txt:2.*duplicate"),
        ("fairseq", "vocab.bpe", "#version: 0.2\nĠ t\nabc\n", "vocab.bpe:3"),
        ("hf", "vocab.json", "not json", "vocab.json.*JSON"),
        ("hf", "vocab.json", '{"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 7}', "vocab.json.*<unk>"),
    ],
)
def test_corrupt_files(tmp_path, layout, name, content, match):
    write_tiny_bpe(tmp_path, layout=layout)
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(TokenizerError, match=match):
        OFATokenizer.from_dir(tmp_path)


def test_bad_code_count(tmp_path):
    write_tiny_bpe(tmp_path)
    with pytest.raises(TokenizerError, match="num_codes"):
        OFATokenizer.from_dir(tmp_path, num_codes=-1)


# ---- parse_categories ------------------------------------------------------------------------------------


def test_parse_categories_inline():
    assert parse_categories("floor, wall, person") == ["floor", "wall", "person"]
    assert parse_categories(" concrete wall ,sky,") == ["concrete wall", "sky"]


def test_parse_categories_file_text():
    text = "# ADE-like classes\nfloor\n\n  wall  \n# comment, with comma\nperson, tree\n"
    assert parse_categories(text) == ["floor", "wall", "person", "tree"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty"),
        ("# only a comment\n\n", "empty"),
        ("floor, wall, Floor", "duplicate.*Floor"),
        ("wall\nWALL\n", "duplicate"),
        ("floor,, wall", "line 1: empty"),
        ("floor, ...", "no letter"),
    ],
)
def test_parse_categories_errors(text, match):
    with pytest.raises(TokenizerError, match=match):
        parse_categories(text)
