"""Self-training (IFSeg Table 4): an adapted model labels the user's unlabeled images, and is fine-tuned on its
confident pseudo-labels (plus any labelled images) through the real-image path; ``rounds`` relabel with the
improved model.

Built on adaptation's machinery: the same :class:`~ifseg_deploy.adapt.step.TrainStep` (AdamW, cosine schedule
over all rounds, clipping, autocast), the same loop (:mod:`ifseg_deploy.adapt.loop`: run state in
``<out>.partial/``, checkpoints, bit-exact ``resume`` on the CPU, Ctrl-C, DDP), the same frozen parts and
loss. Each round's pseudo-labels are saved in the run state, so a resumed run trains on the very same labels.

This module sits above the runtime (pseudo-labelling runs a :class:`~ifseg_deploy.runtime.Segmenter`, on any
backend) and the evaluation readers (the ``folder`` layout of ``masks``), so it cannot live in ``adapt/``,
which the runtime itself builds on.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..adapt import distributed as dist_utils
from ..adapt.config import AdaptConfig
from ..adapt.images import ImageCrops, image_train_step
from ..adapt.loop import (
    METRICS,
    StepCallback,
    TrainingRun,
    check_paths,
    remove_work_dir,
    restore_state,
    save_state,
    start_work_dir,
    train_steps,
)
from ..adapt.step import resolve_precision
from ..adapt.trainer import set_regularisation, training_device
from ..atomic import atomic_write_bytes
from ..errors import InputError, UsageError
from ..model_dir import AdaptedModel
from ..version import __version__
from .inputs import read_images, read_masks
from .labels import class_thresholds, coverage, pseudo_label, select
from .model import load_adapted, segmenter_for_round

log = logging.getLogger(__name__)

RUN_CONFIG = "selftrain_config.json"
RESUME_KEYS = ("config", "categories", "source", "images", "masks", "world_size")
Echo = Callable[[str], None]


@dataclass
class SelfTrainConfig:
    """Self-training's own options; ``train`` holds adaptation's optimizer/schedule options, with ``train.steps``
    the steps of each round and ``train.target_size`` the training crop (the paper's 512)."""

    train: AdaptConfig = field(default_factory=lambda: AdaptConfig(steps=1000))
    rounds: int = 1
    min_confidence: float = 0.5
    balance: bool = True  # without it, confident classes crowd out the others (measured: README)
    scale_range: tuple[float, float] = (0.5, 2.0)
    min_images: int = 8
    every: int = 1  # video input: every N-th frame
    label_short_side: int | None = None  # None: the model's (512 for the paper's models)

    def validate(self, world_size: int = 1) -> None:
        self.train.validate(world_size)
        checks = [(self.rounds >= 1, "rounds must be >= 1"),
                  (0.0 <= self.min_confidence <= 1.0, "min_confidence must lie in [0, 1]"),
                  (0 < self.scale_range[0] <= self.scale_range[1], "scale_range must be 0 < low <= high"),
                  (self.min_images >= 1, "min_images must be >= 1"), (self.every >= 1, "every must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "train": self.train.to_dict()}


@dataclass
class SelfTrainResult:
    out_dir: Path | None  # None on the other DDP processes
    steps_done: int
    last_loss: float
    rounds: list[dict]  # per round: images, coverage (fraction of pixels with a label), images without any
    skipped: list[tuple[str, str]]  # unreadable input files (name, why)


def selftrain(model: str | Path, images: str | Path, out: str | Path, config: SelfTrainConfig | None = None, *,
              masks: str | Path | None = None, backend: str = "torch", label_model: str | Path | None = None,
              device: str | None = None, resume: bool = False, overwrite: bool = False, progress: bool = True,
              echo: Echo | None = None, on_step: StepCallback | None = None) -> SelfTrainResult:
    """Self-train the adapted model directory ``model`` on the images of ``images`` (a folder, or a video read
    every ``config.every`` frames) and write the new model directory ``out``.

    ``masks``: a ``folder`` dataset of labelled images mixed in (their labels replace pseudo-labels; 255 stays
    ignored). ``backend``/``label_model``: the engine and exported file that label the first round (later rounds
    label with the improved model in PyTorch). Ctrl-C raises :class:`~ifseg_deploy.adapt.loop.TrainingInterrupted`
    after saving; ``resume=True`` continues.
    """
    say = echo or log.info
    cfg = config or SelfTrainConfig()
    ctx = dist_utils.DistContext.from_env()
    cfg.validate(ctx.world_size)
    if backend != "torch" and label_model is None:
        raise UsageError(f"--backend {backend} labels with an exported file of this model: give it with "
                         "--label-model (or use --backend torch)")
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    check_paths(out, work, resume=resume, overwrite=overwrite)
    start = load_adapted(model)
    unlabeled = read_images(images, cfg.every)
    for name, why in unlabeled.skipped:
        say(f"skipped {name}: {why}")
    if len(unlabeled.items) < cfg.min_images:
        raise InputError(f"{images}: {len(unlabeled.items)} readable images ({len(unlabeled.skipped)} unreadable "
                         f"skipped), fewer than --min-images {cfg.min_images}; nothing was written")
    labelled = read_masks(masks, start.categories).items if masks is not None else []
    dev = training_device(device, ctx)
    amp_dtype = resolve_precision(cfg.train.precision, dev)

    run_info = json.loads(json.dumps({
        "package_version": __version__, "config": cfg.to_dict(), "categories": start.categories,
        "source": str(Path(model).resolve()), "images": [[n, list(a.shape)] for n, a in unlabeled.items],
        "masks": [n for n, _, _ in labelled], "world_size": ctx.world_size, "device": str(dev),
        "backend": backend, "skipped": [n for n, _ in unlabeled.skipped],
    }))
    net = start.model
    set_regularisation(net, cfg.train.dropout, cfg.train.drop_path)
    net.to(dev).train()
    total = cfg.rounds * cfg.train.steps
    train = image_train_step(net, dataclasses.replace(cfg.train, steps=total), dev, amp_dtype,
                             wrap=lambda m: ctx.wrap(m, dev))
    crops = ImageCrops(cfg.train.target_size, preprocessing=start.preprocessing, scale_range=cfg.scale_range,
                       seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size, device=dev)
    run = TrainingRun(cfg.train, ctx, dev, work, net, train, crops)

    torch.manual_seed(cfg.train.seed + 7919 * (ctx.rank + 1))  # dropout / drop path; resume restores it
    step = 0
    if resume:
        step = restore_state(run, RUN_CONFIG, run_info, RESUME_KEYS)
    elif ctx.is_main:
        start_work_dir(work, RUN_CONFIG, run_info)
    ctx.barrier()
    step, last_loss = _rounds(run, start, cfg, step, unlabeled.arrays, labelled, backend, label_model, progress,
                              on_step, say)
    stats = [_load_round(work, r)[1] for r in range(cfg.rounds)]
    if ctx.is_main:
        _publish(run, start, out, run_info, step, last_loss, stats, overwrite or resume)
    ctx.barrier()
    return SelfTrainResult(out if ctx.is_main else None, step, last_loss, stats, unlabeled.skipped)


def _rounds(run: TrainingRun, start: AdaptedModel, cfg: SelfTrainConfig, step: int, images: list[np.ndarray],
            labelled: list, backend: str, label_model, progress: bool, on_step: StepCallback | None,
            say: Echo) -> tuple[int, float]:
    """Label, then train, round after round from the one ``step`` is in; returns the steps done, last loss."""
    per_round = cfg.train.steps
    last_loss = float("nan")
    while step < cfg.rounds * per_round:
        r = step // per_round
        if not (run.work / _labels_file(r)).is_file():
            if run.ctx.is_main:
                _label_round(run, start, cfg, r, images, backend, label_model, progress, say)
            run.ctx.barrier()
        labels, stats = _load_round(run.work, r)
        pool = [(im, lab) for im, lab in zip(images, labels) if (lab != 255).any()]
        pool += [(im, lab) for _, im, lab in labelled if (lab != 255).any()]
        if not pool:
            raise InputError(f"round {r + 1}: no pixel reaches --min-confidence {cfg.min_confidence} and no "
                             "labelled image marks a class; lower --min-confidence")
        run.data.set_data([im for im, _ in pool], [lab for _, lab in pool])
        run.desc = f"selftrain {r + 1}/{cfg.rounds}"
        run.postfix = {"coverage": f"{stats['coverage']:.0%}"}
        run.model.train()
        step, last_loss = train_steps(run, step, (r + 1) * per_round, progress, on_step)
        save_state(run, step)  # the next round labels with exactly these weights, also after a resume
    return step, last_loss


def _label_round(run: TrainingRun, start: AdaptedModel, cfg: SelfTrainConfig, r: int, images: list[np.ndarray],
                 backend: str, label_model, progress: bool, say: Echo) -> None:
    """Pseudo-label every image with the current model and save the selected labels in the run state."""
    from tqdm.auto import tqdm

    current = AdaptedModel(run.model, start.tokenizer, start.categories, start.prompt, start.preprocessing)
    segmenter = segmenter_for_round(r, current, backend, label_model, run.dev, cfg.label_short_side)
    bar = tqdm(total=len(images), desc=f"label {r + 1}/{cfg.rounds}", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        raw = pseudo_label(segmenter, images, on_image=lambda done, total: bar.update(1))
    finally:
        bar.close()
        segmenter.close()
    thresholds = class_thresholds(raw, len(start.categories), cfg.min_confidence, cfg.balance)
    labels = [select(lab, conf, thresholds) for lab, conf in raw]
    stats = {"round": r + 1, "images": len(images), "coverage": coverage(labels),
             "images_without_labels": sum(1 for lab in labels if not (lab != 255).any()),
             "thresholds": thresholds.tolist()}
    say(f"round {r + 1}: pseudo-labels cover {stats['coverage']:.1%} of the pixels "
        f"(--min-confidence {cfg.min_confidence}{', balanced per class' if cfg.balance else ''})")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, stats=np.array(json.dumps(stats)), **{f"l{i}": lab for i, lab in enumerate(labels)})
    atomic_write_bytes(run.work / _labels_file(r), buffer.getvalue())


def _labels_file(r: int) -> str:
    return f"pseudo_labels_round{r + 1}.npz"


def _load_round(work: Path, r: int) -> tuple[list[np.ndarray], dict]:
    with np.load(work / _labels_file(r)) as f:
        stats = json.loads(str(f["stats"]))
        return [f[f"l{i}"] for i in range(stats["images"])], stats


def _publish(run: TrainingRun, start: AdaptedModel, out: Path, run_info: dict, step: int, last_loss: float,
             stats: list[dict], overwrite: bool) -> None:
    """Write the new model directory in one rename and drop the run state."""
    final = AdaptedModel(run.model.eval(), start.tokenizer, start.categories, start.prompt, start.preprocessing,
                         metadata={**start.metadata, "selftraining": {**run_info, "steps": step,
                                                                      "final_loss": last_loss, "rounds": stats}})
    extra = {name: (run.work / name).read_bytes() for name in (RUN_CONFIG, METRICS)}
    final.save_pretrained(out, overwrite=overwrite, extra_files=extra)
    remove_work_dir(run.work)
