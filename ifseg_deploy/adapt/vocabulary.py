"""Open-vocabulary adaptation (issue 13): every sample draws its own vocabulary from a large name list.

Per sample and step, M names (M uniform in ``vocab_min..vocab_max``, capped by the list's size) are drawn
without replacement, in random order. The sample's prompt lists them (``<s>`` prompt, names, ``unknown``,
``</s>``, then ``<pad>`` up to the batch's longest prompt; the encoder masks the padding), its class table is
their mean token embeddings, and its word map is drawn from them: the grid holds *global* ids (rows of the
whole list's class table, which the fused word-map kernel gathers) and the targets hold each cell's position in
the sample's own list. Everything is drawn on the model's device from one generator, whose state checkpoints
save.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..modeling.encoder import PAD_ID
from ..modeling.segofa import SegOFA
from .config import AdaptConfig


def subset_bounds(cfg: AdaptConfig, vocabulary_size: int) -> tuple[int, int]:
    """(smallest, largest) number of names per sample: ``vocab_min..vocab_max`` capped by the list's size."""
    hi = min(cfg.vocab_max, vocabulary_size)
    return min(cfg.vocab_min, hi), hi


def check_prompt_fits(name_lengths: Sequence[int], fixed: int, most: int, limit: int) -> None:
    """Refuse a vocabulary whose longest possible prompt (the ``most`` longest names plus the ``fixed`` tokens)
    exceeds the encoder's ``limit`` text positions, before anything is trained."""
    longest = fixed + sum(sorted(name_lengths, reverse=True)[:most])
    if longest > limit:
        raise ValueError(f"a prompt of the {most} longest names of the vocabulary has {longest} tokens, but the "
                         f"encoder has {limit} text positions; lower vocab_max (--vocab-max)")


class VocabularyMaps:
    """Random word maps over random vocabularies drawn from a name list (the open-vocabulary counterpart of
    :class:`~.data.ArtificialMaps`, with the same DDP slicing: every rank draws the global batch).

    ``name_tokens``: each name's token ids; ``prefix`` / ``suffix``: the prompt's ids before and after the names
    (``<s>`` + prompt words, ``unknown`` + ``</s>``)."""

    def __init__(self, name_tokens: Sequence[Sequence[int]], prefix: Sequence[int], suffix: Sequence[int],
                 bounds: tuple[int, int], grid_max: int = 32, *, seed: int = 0, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        v = len(name_tokens)
        t = max(len(n) for n in name_tokens)
        self.names = torch.full((v, t), PAD_ID, dtype=torch.long)
        for i, toks in enumerate(name_tokens):
            self.names[i, :len(toks)] = torch.tensor(list(toks), dtype=torch.long)
        self.names = self.names.to(self.device)
        self.prefix = torch.tensor(list(prefix), dtype=torch.long, device=self.device)
        self.suffix = torch.tensor(list(suffix), dtype=torch.long, device=self.device)
        self.lo, self.hi = bounds
        self.grid_max = grid_max
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def sample(self, batch: int) -> tuple[Tensor, ...]:
        """This rank's share of a global batch: (grid (b, S, S) global ids, sizes (b, 2), local (b, S, S) ids in
        the sample's list, subset (b, K) global ids of its names, valid (b, K) bool, src (b, Lt) prompt ids),
        K = the largest subset size."""
        g, dev, s = self.generator, self.device, self.grid_max
        v = self.names.shape[0]
        count = torch.randint(self.lo, self.hi + 1, (batch, 1), generator=g, device=dev)
        subset = torch.rand(batch, v, generator=g, device=dev).argsort(dim=1)[:, :self.hi]  # random order
        valid = torch.arange(self.hi, device=dev).unsqueeze(0) < count
        sizes = torch.randint(1, s + 1, (batch, 2), generator=g, device=dev)
        local = (torch.rand(batch, s, s, generator=g, device=dev) * count.view(batch, 1, 1)).long()
        local = local.clamp_max(count.view(batch, 1, 1) - 1)  # rand() < 1, but float rounding can reach count
        grid = subset.gather(1, local.flatten(1)).view(batch, s, s)
        out = (grid, sizes, local, subset, valid, self._prompts(subset, valid))
        if self.world_size == 1:
            return out
        local_b = batch // self.world_size
        mine = slice(self.rank * local_b, (self.rank + 1) * local_b)
        src = out[-1][mine]
        keep = int(src.ne(PAD_ID).sum(1).max())  # this rank's longest prompt
        return (*(x[mine] for x in out[:-1]), src[:, :keep])

    def _prompts(self, subset: Tensor, valid: Tensor) -> Tensor:
        """(b, Lt) prompt ids, each sample's tokens first and ``<pad>`` after them."""
        b = subset.shape[0]
        names = self.names[subset] * valid.unsqueeze(-1) + PAD_ID * ~valid.unsqueeze(-1)  # (b, K, T)
        parts = [self.prefix.expand(b, -1), names.flatten(1), self.suffix.expand(b, -1)]
        ids = torch.cat(parts, dim=1)
        # Move every real token before the padding, keeping their order (a stable sort on "is padding").
        order = ids.eq(PAD_ID).to(torch.uint8).argsort(dim=1, stable=True)
        ids = ids.gather(1, order)
        longest = int(ids.ne(PAD_ID).sum(1).max())  # the step's one host sync: the batch's prompt length
        return ids[:, :longest]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class VocabularyForward(nn.Module):
    """One open-vocabulary training forward: global-id grids -> fused word-map embeddings (rows of the whole
    list's class table) -> SegOFA logits over each sample's own classes (B, K, h, w), padded classes masked."""

    def __init__(self, model: SegOFA, cfg: AdaptConfig, table: Tensor) -> None:
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.register_buffer("table", table, persistent=False)  # (V, d) mean token embeddings, frozen

    def forward(self, grid: Tensor, sizes: Tensor, local: Tensor, subset: Tensor, valid: Tensor,
                src: Tensor) -> Tensor:
        from ..kernels import wordmap_embed

        m = self.model
        ln = m.encoder.patch_layernorm_embedding
        tokens = wordmap_embed(grid, sizes, self.table, m.encoder.type_embedding.weight[1], ln.weight, ln.bias,
                               out_hw=(self.cfg.wordmap_size, self.cfg.wordmap_size), eps=ln.eps,
                               impl=self.cfg.kernel)
        return m.run_tokens(tokens, src, embedded=True, check_padding=True, class_table=self.table[subset],
                            class_mask=valid).logits


def training_vocabulary(vocabulary: Sequence[str], categories: Sequence[str]) -> list[str]:
    """The list the samples draw from: ``vocabulary`` (refused when empty or with duplicates), then those of
    ``categories`` it lacks."""
    from ..tokenizer import clean_names, name_key

    names = clean_names(vocabulary)
    seen = {name_key(n) for n in names}
    return names + [c for c in categories if name_key(c) not in seen]


def vocabulary_train_step(model: SegOFA, tokenizer, names: Sequence[str], prompt: str, cfg: AdaptConfig,
                          device: torch.device, amp_dtype: torch.dtype | None, wrap=None, *, rank: int = 0,
                          world_size: int = 1):  # noqa: ANN001 - tokenizer, wrap: see the trainer
    """(the TrainStep, the VocabularyMaps data source) of open-vocabulary adaptation on ``names``. Refuses a
    name that tokenizes to nothing and a vocabulary whose largest prompt does not fit, before any step."""
    from ..modeling.position import max_text_tokens
    from ..tokenizer import UNKNOWN_NAME
    from .ops import segmentation_loss, wordmap_targets
    from .step import TrainStep

    name_tokens = tokenizer.name_tokens(names)
    prefix = [tokenizer.bos_id, *tokenizer.encode_words(prompt)]
    suffix = [*tokenizer.encode_words(UNKNOWN_NAME), tokenizer.eos_id]
    bounds = subset_bounds(cfg, len(names))
    check_prompt_fits([len(t) for t in name_tokens], len(prefix) + len(suffix), bounds[1],
                      max_text_tokens(model.cfg.max_source_positions))
    with torch.no_grad():
        table = model.class_embeddings(name_tokens).to(device)
    data = VocabularyMaps(name_tokens, prefix, suffix, bounds, cfg.grid_max, seed=cfg.seed, rank=rank,
                          world_size=world_size, device=device)
    forward = VocabularyForward(model, cfg, table)
    step = TrainStep.from_config(
        wrap(forward) if wrap is not None else forward,
        lambda grid, sizes, local, *_: wordmap_targets(local, sizes, cfg.target_size),
        lambda logits, target: segmentation_loss(logits, target, cfg.loss),
        [p for p in model.parameters() if p.requires_grad], cfg, device, amp_dtype)
    return step, data
