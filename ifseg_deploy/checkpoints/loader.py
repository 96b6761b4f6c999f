"""Build a SegOFA model from the checkpoints users have: official fairseq ``ofa_*.pt`` files or Hugging Face
OFA directories, plus a list of category names."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..modeling.position import max_text_tokens
from ..modeling.segofa import SegOFA
from ..presets import OFA_ENGLISH_VOCAB_ROWS, OFA_MAX_SOURCE_POSITIONS, OFAConfig
from ..tokenizer import DEFAULT_PROMPT, OFATokenizer, PromptTooLongError, TokenizerError
from . import hf_keys
from .errors import CheckpointError
from .ofa_keys import NEW_SEG_KEYS, TIED_KEYS, check_arch, ignored_reason, infer_config
from .safe_load import safe_torch_load

log = logging.getLogger(__name__)

BPE_FILES = ("encoder.json", "vocab.bpe", "dict.txt")


@dataclass
class LoadReport:
    """What loading did with every key, so nothing is silently dropped or invented."""

    source: str
    layout: str
    arch: str
    used: list[str] = field(default_factory=list)  # keys loaded into the model
    tied: dict[str, str] = field(default_factory=dict)  # key -> the key holding the same tensor (loaded once)
    initialised: list[str] = field(default_factory=list)  # new IFSeg parameters, N(0, 0.02)
    ignored: dict[str, str] = field(default_factory=dict)  # key -> reason
    unexpected: list[str] = field(default_factory=list)  # keys nobody knows; reported, not used

    def summary(self) -> str:
        lines = [f"loaded {self.source} ({self.layout} layout, arch {self.arch})",
                 f"  used {len(self.used)} tensors"]
        if self.tied:
            lines.append(f"  tied {len(self.tied)} duplicate name(s): "
                         + ", ".join(f"{k} = {v}" for k, v in self.tied.items()))
        if self.initialised:
            lines.append(f"  initialised {len(self.initialised)} new IFSeg tensors: "
                         + ", ".join(sorted({k.rsplit('.', 1)[0] for k in self.initialised})))
        if self.ignored:
            reasons: dict[str, int] = {}
            for why in self.ignored.values():
                reasons[why] = reasons.get(why, 0) + 1
            lines += [f"  ignored {n} key(s): {why}" for why, n in reasons.items()]
        if self.unexpected:
            lines.append(f"  UNEXPECTED keys (not used): {', '.join(self.unexpected[:20])}"
                         + (" ..." if len(self.unexpected) > 20 else ""))
        return "\n".join(lines)


def _init_new_seg_params(model: SegOFA, keys: Sequence[str], generator: torch.Generator) -> None:
    """IFSeg's init_bert_params: N(0, 0.02) for Embedding/Linear weights; LayerNorm keeps 1 and 0."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in keys:
            p = params[key]
            if ".seg_pos_ln." in key:
                p.fill_(1.0 if key.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def state_dict_into_model(state: Mapping[str, Tensor], cfg: OFAConfig, name_tokens: Sequence[Sequence[int]],
                          src_tokens: Sequence[int], source: str, layout: str, seed: int = 0
                          ) -> tuple[SegOFA, LoadReport]:
    """Fill a fresh SegOFA from a fairseq-named state dict; every key is used, tied, ignored or reported."""
    model = SegOFA(cfg, num_classes=len(name_tokens))
    own = model.state_dict()
    report = LoadReport(source, layout, cfg.name)
    to_load: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in TIED_KEYS:
            target = TIED_KEYS[key]
            if target in state and state[target].shape == value.shape and not torch.equal(state[target], value):
                report.unexpected.append(f"{key} (differs from its tied {target})")
            else:
                report.tied[key] = target
            continue
        if key in own and ignored_reason(key) is None:
            if own[key].shape != value.shape:
                raise CheckpointError(f"{source}: {key} has shape {tuple(value.shape)}, the {cfg.name} "
                                      f"architecture expects {tuple(own[key].shape)}")
            to_load[key] = value.to(own[key].dtype) if value.is_floating_point() else value
        elif (why := ignored_reason(key)) is not None:
            report.ignored[key] = why
        else:
            report.unexpected.append(key)
    derived = {"src_tokens", "decoder.seg_embed_tokens.weight"}
    missing = [k for k in own if k not in to_load and k not in derived]
    bad = [k for k in missing if not NEW_SEG_KEYS.match(k)]
    if bad:
        raise CheckpointError(f"{source} lacks {len(bad)} tensor(s) an OFA {cfg.name} model needs: "
                              + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    model.load_state_dict(to_load, strict=False)
    report.used = list(to_load)
    _init_new_seg_params(model, missing, torch.Generator().manual_seed(seed))
    report.initialised = missing
    model.set_prompt(src_tokens, name_tokens)
    if report.unexpected:
        log.warning("%s: %d unexpected key(s) not used: %s", source, len(report.unexpected),
                    ", ".join(report.unexpected[:10]))
    return model, report


def _find_bpe_dir(checkpoint: Path, bpe_dir: str | Path | None) -> Path:
    if bpe_dir is not None:
        return Path(bpe_dir)
    for cand in (checkpoint.parent, checkpoint.parent / "BPE", checkpoint.parent / "bpe"):
        if all((cand / f).is_file() for f in BPE_FILES):
            return cand
    raise CheckpointError(
        f"no BPE files for {checkpoint}: pass --bpe-dir DIR with {', '.join(BPE_FILES)} "
        "(they come with the OFA code as utils/BPE/), or put them next to the checkpoint"
    )


def _check_vocab(rows: int, tokenizer: OFATokenizer, source: str, vocab_source: Path) -> None:
    # IFSeg-trained checkpoints carry one extra row (<seg_0>, never looked up) after the OFA vocabulary.
    if rows in (tokenizer.num_embeddings, tokenizer.num_embeddings + 1):
        return
    msg = (f"{source}: the token table has {rows} rows, but the vocabulary in {vocab_source} implies "
           f"{tokenizer.num_embeddings}.")
    if tokenizer.num_embeddings == OFA_ENGLISH_VOCAB_ROWS:
        msg += (f" The English OFA checkpoints have {OFA_ENGLISH_VOCAB_ROWS} rows; another count usually means "
                "the Chinese OFA (OFA-CN), whose vocabulary differs: IFSeg on it gives mIoU near 0.0001. "
                "Use the English checkpoint (ofa_base.pt or OFA-Sys/ofa-base).")
    raise CheckpointError(msg)


def load_fairseq_state(path: str | Path) -> dict[str, Tensor]:
    """The ``"model"`` state dict of an official fairseq checkpoint, loaded without running pickled code."""
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping):
        keys = list(ckpt)[:6] if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a fairseq checkpoint: expected a dict with a 'model' state dict, "
                              f"found {keys}")
    return dict(ckpt["model"])


def load_ofa(checkpoint: str | Path, categories: Sequence[str], *, bpe_dir: str | Path | None = None,
             arch: str | None = None, prompt: str = DEFAULT_PROMPT, seed: int = 0
             ) -> tuple[SegOFA, OFATokenizer, LoadReport]:
    """Load an OFA checkpoint (fairseq file or Hugging Face directory) as a SegOFA for ``categories``.

    The size is inferred from the weights (or checked against ``arch``); the class table is built from the
    names; the IFSeg parameters that OFA lacks are initialised as the official code does. A prompt longer than
    the encoder's text positions raises :class:`~ifseg_deploy.tokenizer.PromptTooLongError` before the weights
    are read; every other problem is a :class:`CheckpointError`.
    """
    path = Path(checkpoint)
    try:
        vocab_source = path if path.is_dir() else _find_bpe_dir(path, bpe_dir)
        tokenizer = OFATokenizer.from_dir(vocab_source)
        name_tokens = tokenizer.name_tokens(categories)
        # Before the weights (seconds to minutes for a real checkpoint): every official OFA size has the same
        # text positions. The checkpoint's own tables are checked again below.
        tokenizer.check_prompt_length(categories, max_text_tokens(OFA_MAX_SOURCE_POSITIONS), prompt)
        src_tokens = tokenizer.prompt_ids(categories, prompt)
    except PromptTooLongError:
        raise
    except TokenizerError as e:
        raise CheckpointError(str(e)) from None
    if path.is_dir():
        layout = "huggingface"
        state = hf_keys.to_fairseq_names(hf_keys.load_hf_state(path), str(path))
    else:
        layout = "fairseq"
        state = load_fairseq_state(path)
    cfg = check_arch(infer_config(state, str(path)), arch, str(path))
    _check_vocab(cfg.vocab_rows, tokenizer, str(path), vocab_source)
    tokenizer.check_prompt_length(categories, max_text_tokens(cfg.max_source_positions), prompt)
    model, report = state_dict_into_model(state, cfg, name_tokens, src_tokens, str(path), layout, seed)
    return model, tokenizer, report
