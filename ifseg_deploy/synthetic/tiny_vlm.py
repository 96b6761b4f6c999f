"""A tiny vision-language model of the OFA architecture for the synthetic world.

OFA's pre-training puts image tokens and word tokens of the same concept close together; IFSeg relies on that.
Here the property is made directly, from a seed:

1. the token table is random (seeded), so the word side is fixed first: each concept's class embedding is the
   mean of its name's token rows, as IFSeg builds it;
2. only the ResNet stem (``encoder.embed_images``) and ``image_proj`` are trained, on scenes of the world's
   training split, so that the projected token of each 16x16 cell matches the class embedding of the concept
   covering that cell (a contrastive loss over all concepts plus a regression onto the right row);
3. the transformer stays untrained (random): teaching it is the job of image-free adaptation.

The recipe's categories decide the world: by default the original eight concepts (the demo's);
:meth:`WorldRecipe.open_vocabulary` takes all sixteen, so that a name never used in adaptation still points at
its concept's image tokens, as in OFA. The vocabulary follows the categories (see :mod:`.vocab`).

The result is written as an official fairseq-layout OFA checkpoint (``ofa_world.pt`` with its ``encoder.json``,
``vocab.bpe``, ``dict.txt`` beside it), so it loads through the same code as a user's ``ofa_base.pt``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..modeling.init import random_init_, untrained_profile
from ..modeling.segofa import SegOFA
from ..presets import OFAConfig
from .vocab import name_tokens, world_tokenizer, write_bpe_files
from .world import ALL_CATEGORIES, CONCEPTS, DEFAULT_CATEGORIES, TRAIN_SEEDS, make_scene, to_model_input

__all__ = [
    "BUILD_FORMAT",
    "CHECKPOINT_NAME",
    "WorldRecipe",
    "build_world_checkpoint",
    "build_world_model",
    "checkpoint_state",
    "world_config",
]

CHECKPOINT_NAME = "ofa_world.pt"
# Bump when the build procedure changes in a way the recipe fields do not capture (invalidates caches).
BUILD_FORMAT = 1
PATCH = 16


@dataclass(frozen=True)
class WorldRecipe:
    """Everything that determines the built model; its hash keys the cache."""

    seed: int = 0
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    # Architecture: OFA's, at a size that trains in minutes on a CPU.
    d_model: int = 64
    ffn_dim: int = 256
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    resnet_width: int = 16
    transformer_gain: float = 2.0  # scale of the untrained transformer's random weights (see _build)
    # Training of the image side.
    steps: int = 700
    batch_size: int = 16
    crop: int = 128
    pool_scenes: int = 256
    pool_size: int = 192
    lr: float = 3e-3
    temperature: float = 0.1
    regression_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "categories", tuple(self.categories))
        bad = [c for c in self.categories if c not in CONCEPTS]
        if bad or len(self.categories) < 2 or len(set(self.categories)) != len(self.categories):
            raise ValueError(f"categories must be >= 2 distinct names from {list(CONCEPTS)}, got {self.categories}")
        if self.crop % PATCH or self.crop > self.pool_size:
            raise ValueError(f"crop must be a multiple of {PATCH} and at most pool_size")
        if min(self.steps, self.batch_size, self.pool_scenes) < 1:
            raise ValueError("steps, batch_size and pool_scenes must be >= 1")

    @classmethod
    def open_vocabulary(cls, seed: int = 0, **overrides) -> WorldRecipe:
        """The 16-concept world (:data:`ALL_CATEGORIES`): image tokens of every concept aligned with its name, for
        adapting on some names and testing on names never adapted to. Other fields as given, else the default."""
        return cls(seed=seed, categories=ALL_CATEGORIES, **overrides)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["categories"] = list(self.categories)
        return d

    def key(self) -> str:
        """Cache key: the recipe, the build format and the package version."""
        from ..version import __version__

        blob = json.dumps({"recipe": self.to_dict(), "build_format": BUILD_FORMAT, "package": __version__},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def world_config(recipe: WorldRecipe | None = None) -> OFAConfig:
    """The architecture of the world model (an OFA config named ``custom``, as the loader infers it)."""
    r = recipe or WorldRecipe()
    return OFAConfig("custom", d_model=r.d_model, ffn_dim=r.ffn_dim, heads=r.heads, encoder_layers=r.encoder_layers,
                     decoder_layers=r.decoder_layers, resnet_type="resnet-mini", resnet_width=r.resnet_width,
                     vocab_rows=world_tokenizer(r.categories).num_embeddings)


# ---- training of the image side ---------------------------------------------------------------------------------

def _scene_pool(recipe: WorldRecipe) -> tuple[np.ndarray, np.ndarray]:
    """Training scenes: seeds ``seed * pool_scenes + i`` of the training split (never the test seeds)."""
    start = recipe.seed * recipe.pool_scenes
    if start + recipe.pool_scenes > len(TRAIN_SEEDS):
        raise ValueError("seed too large for the training split")
    size = (recipe.pool_size, recipe.pool_size)
    scenes = [make_scene(TRAIN_SEEDS[start + i], size, recipe.categories) for i in range(recipe.pool_scenes)]
    return np.stack([s[0] for s in scenes]), np.stack([s[1] for s in scenes])


def cell_label_fractions(masks: Tensor, num_classes: int) -> Tensor:
    """(B, H, W) labels -> (B, K, ceil(H/16), ceil(W/16)) fraction of each class in each 16x16 cell."""
    onehot = F.one_hot(masks, num_classes).permute(0, 3, 1, 2).float()
    return F.avg_pool2d(onehot, PATCH, ceil_mode=True)


def alignment_loss(tokens: Tensor, class_emb: Tensor, fractions: Tensor, temperature: float,
                   regression_weight: float) -> tuple[Tensor, Tensor]:
    """Loss pulling each projected cell token onto its concept's class embedding; also the cell accuracy.

    tokens (B, h, w, d); class_emb (K, d); fractions (B, K, h, w). Cosine-softmax over all concepts against the
    cell's label fractions, plus the squared distance to the majority concept's row (relative to its norm),
    weighted by the cell's purity so that boundary cells pull less.
    """
    z = tokens.flatten(0, 2)
    frac = fractions.permute(0, 2, 3, 1).flatten(0, 2)
    logits = F.normalize(z, dim=-1) @ F.normalize(class_emb, dim=-1).T / temperature
    contrastive = -(frac * logits.log_softmax(-1)).sum(-1).mean()
    purity, target = frac.max(-1)
    row = class_emb[target]
    regression = (purity * (z - row).pow(2).sum(-1) / row.pow(2).sum(-1)).mean()
    accuracy = (logits.argmax(-1) == target).float().mean()
    return contrastive + regression_weight * regression, accuracy


def _image_side(model: SegOFA) -> list[nn.Parameter]:
    return [*model.encoder.embed_images.parameters(), *model.encoder.image_proj.parameters()]


def train_image_side(model: SegOFA, recipe: WorldRecipe, progress: bool = True) -> dict:
    """Train the ResNet convs and ``image_proj`` (temporarily trainable; frozen again at the end)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng([recipe.seed, 1])
    images, masks = _scene_pool(recipe)
    class_emb = model.class_embeddings(name_tokens(recipe.categories)).float()
    params = _image_side(model)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=1e-4)
    warmup = max(1, recipe.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, recipe.steps) / recipe.steps)))
    model.eval()  # no dropout anywhere; the ResNet's batch norm is frozen by design
    k, c, n = len(recipe.categories), recipe.crop, len(images)
    bar = tqdm(range(recipe.steps), desc="building the world model", disable=not progress, unit="step")
    acc_ema = loss_ema = None
    try:
        for _ in bar:
            idx = rng.integers(0, n, recipe.batch_size)
            ys, xs = rng.integers(0, recipe.pool_size - c + 1, (2, recipe.batch_size))
            flip = rng.random(recipe.batch_size) < 0.5
            crops = [(images[i, y:y + c, x:x + c], masks[i, y:y + c, x:x + c]) for i, y, x in zip(idx, ys, xs)]
            crops = [(im[:, ::-1], m[:, ::-1]) if f else (im, m) for (im, m), f in zip(crops, flip)]
            pixels = to_model_input(np.stack([im for im, _ in crops]))
            target = torch.from_numpy(np.ascontiguousarray(np.stack([m for _, m in crops])))
            tokens = model.project_features(model.image_features(pixels))
            loss, acc = alignment_loss(tokens, class_emb, cell_label_fractions(target, k), recipe.temperature,
                                       recipe.regression_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            sched.step()
            loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
            acc_ema = acc.item() if acc_ema is None else 0.95 * acc_ema + 0.05 * acc.item()
            bar.set_postfix(loss=f"{loss_ema:.3f}", cell_acc=f"{acc_ema:.3f}")
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return {"final_loss_ema": loss_ema, "final_cell_accuracy_ema": acc_ema}


# ---- the model and its checkpoint -------------------------------------------------------------------------------

@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None: leave torch's setting), restoring the previous count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def build_world_model(recipe: WorldRecipe | None = None, progress: bool = True,
                      threads: int | None = 1) -> tuple[SegOFA, dict]:
    """Build the world model in memory: ``(SegOFA with the recipe's categories set, training stats)``.

    ``threads=1`` by default: these convolutions are too small to gain from intra-op threads, and on a shared
    2-core machine two threads were measured 10x slower than one."""
    recipe = recipe or WorldRecipe()
    with torch_threads(threads):
        return _build(recipe, progress)


def _build(recipe: WorldRecipe, progress: bool) -> tuple[SegOFA, dict]:
    cfg = world_config(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = SegOFA(cfg, num_classes=len(recipe.categories))
    # ``transformer_gain`` 2 makes the untrained transformer scramble its input. With BERT's N(0, 0.02) the
    # residual stream carries each image token almost unchanged to the tied class head, so the "unadapted" model
    # already segments (measured mIoU 0.27-0.59 over 4 seeds); with gain 1 that leak still reached 0.19 on one
    # seed of 4.
    random_init_(model, recipe.seed, untrained_profile(recipe.transformer_gain))
    tok = world_tokenizer(recipe.categories)
    model.set_prompt(tok.prompt_ids(recipe.categories), tok.name_tokens(recipe.categories))
    start = time.perf_counter()
    stats = train_image_side(model, recipe, progress)
    stats["train_seconds"] = round(time.perf_counter() - start, 1)
    return model, stats


def checkpoint_state(model: SegOFA) -> dict[str, Tensor]:
    """The state dict as an official pre-trained OFA checkpoint holds it: no IFSeg seg parameters, no prompt,
    the decoder's tied token table stored under its own name."""
    skip = ("decoder.seg_", "decoder.embed_seg_positions")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
             if not k.startswith(skip) and k != "src_tokens"}
    state["decoder.embed_tokens.weight"] = state["encoder.embed_tokens.weight"]
    return state


def build_world_checkpoint(out_dir: str | Path, recipe: WorldRecipe | None = None, progress: bool = True,
                           threads: int | None = 1) -> dict:
    """Build the model and write ``ofa_world.pt`` + the BPE files into ``out_dir``; returns the build info."""
    recipe = recipe or WorldRecipe()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, stats = build_world_model(recipe, progress, threads)
    torch.save({"model": checkpoint_state(model)}, out / CHECKPOINT_NAME)
    write_bpe_files(out, recipe.categories)
    return {"recipe": recipe.to_dict(), "key": recipe.key(), "stats": stats,
            "build_seconds": round(time.perf_counter() - start, 1)}
