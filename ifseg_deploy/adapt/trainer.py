"""Image-free adaptation: train SegOFA on artificial word maps of the category names (IFSeg, §2-§3).

A run keeps its state in ``<out>.partial/`` (run configuration, metrics, the latest checkpoint) and writes the
adapted-model directory ``<out>`` in one atomic rename when it finishes. ``resume=True`` continues a killed or
interrupted run from its last checkpoint and reaches the same final weights as an uninterrupted run (bit-exact on
the CPU): every random stream (data generator, dropout/drop-path RNG) is part of the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..devices import DeviceError, parse_device, torch_device
from ..model_dir import OPEN_VOCABULARY, PER_VOCABULARY, AdaptedModel
from ..modeling.layers import DropPath
from ..modeling.segofa import SegOFA
from ..tokenizer import DEFAULT_PROMPT
from ..version import __version__
from . import distributed as dist_utils
from .config import AdaptConfig
from .data import ArtificialMaps
from .loop import (
    CHECKPOINT,
    METRICS,
    StepCallback,
    TrainingInterrupted,
    TrainingRun,
    check_paths,
    remove_work_dir,
    restore_state,
    start_work_dir,
    train_steps,
)
from .ops import WordMapForward, wordmap_train_step
from .step import TrainStep, cosine_factor, resolve_precision
from .vocabulary import training_vocabulary, vocabulary_train_step

__all__ = ["CHECKPOINT", "METRICS", "RUN_CONFIG", "AdaptResult", "AdaptationInterrupted", "StepCallback",
           "adapt", "cosine_factor", "resolve_precision",
           "set_regularisation", "training_device"]

log = logging.getLogger(__name__)

#: The former name of :class:`~.ops.WordMapForward`, which tests/test_wordmap_kernel.py imports from here.
WordMapStep = WordMapForward

RUN_CONFIG = "adapt_config.json"
#: The keys of the run configuration that must match for ``resume=True``.
RESUME_KEYS = ("config", "categories", "prompt", "source", "world_size")

#: What adaptation raises after Ctrl-C (the loop's :class:`~.loop.TrainingInterrupted`).
AdaptationInterrupted = TrainingInterrupted


@dataclass
class AdaptResult:
    out_dir: Path | None  # None when interrupted
    steps_done: int
    last_loss: float


def set_regularisation(model: SegOFA, dropout: float, drop_path: float) -> None:
    """Dropout everywhere it exists and drop path rising linearly from 0 to ``drop_path`` over each stack."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    for stack in (model.encoder.layers, model.decoder.layers):
        n = len(stack)
        for i, layer in enumerate(stack):
            layer.drop_path = DropPath(drop_path * i / (n - 1) if n > 1 else 0.0)


def _load_start_model(checkpoint: str | Path, categories: Sequence[str], *, bpe_dir, arch, prompt: str,
                      seed: int) -> AdaptedModel:
    """The model to adapt; both loaders refuse a too-long prompt before they read the weights."""
    path = Path(checkpoint)
    if path.is_dir() and (path / "model.safetensors").is_file():  # a model directory (e.g. `inspect --save`)
        return AdaptedModel.from_pretrained(path, categories=categories, prompt=prompt)
    return AdaptedModel.unadapted_from_ofa(path, categories, bpe_dir=bpe_dir, arch=arch, prompt=prompt, seed=seed)


def training_device(device: str | torch.device | None, ctx: dist_utils.DistContext) -> torch.device:
    """The training device (default: this process's GPU if any, else the CPU); :class:`DeviceError` for a name
    that is no device, a CUDA device this machine lacks, or ``tensorrt``."""
    if device is None:
        return ctx.default_device()
    try:
        tensorrt = parse_device(str(device)).tensorrt
    except DeviceError:
        raise DeviceError(f"unknown device {str(device)!r}; adaptation runs on cpu, cuda or cuda:N") from None
    if tensorrt:
        raise DeviceError(f"device {str(device)!r}: adaptation runs on cpu, cuda or cuda:N")
    return torch_device(str(device))


def check_kernel(kernel: str, dev: torch.device) -> None:
    """Refuse ``kernel="triton"`` where it would fail at the first step (no triton, or no CUDA device)."""
    if kernel != "triton":
        return
    from ..kernels.wordmap import resolve_impl

    try:
        resolve_impl("triton", dev.type)
    except RuntimeError as e:  # triton does not import
        raise ValueError(str(e)) from None
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"kernel triton runs on a CUDA device, not {dev}; use --kernel torch (or auto)")


def _fingerprint(path: str | Path) -> dict:
    p = Path(path)
    files = [p] if p.is_file() else sorted(q for q in p.iterdir() if q.is_file())
    return {"path": str(p.resolve()), "bytes": sum(q.stat().st_size for q in files)}


def adapt(checkpoint: str | Path, categories: Sequence[str], out: str | Path, config: AdaptConfig | None = None, *,
          bpe_dir: str | Path | None = None, arch: str | None = None, prompt: str = DEFAULT_PROMPT,
          device: str | torch.device | None = None, resume: bool = False, overwrite: bool = False,
          progress: bool = True, preprocessing: dict | None = None, on_step: StepCallback | None = None
          ) -> AdaptResult:
    """Adapt an OFA checkpoint to ``categories`` from their names alone and write the model directory ``out``.

    Raises :class:`AdaptationInterrupted` after saving when stopped by Ctrl-C; ``resume=True`` continues.
    ``preprocessing`` overrides entries of the saved model's inference preprocessing (e.g. ``short_side`` for
    images smaller than the paper's 512 px). ``on_step`` (see :data:`StepCallback`) sees every step.
    """
    # Every input is checked before OUT.partial/ is created (or an old one replaced): a refused run loses nothing.
    cfg = config or AdaptConfig()
    ctx = dist_utils.DistContext.from_env()
    cfg.validate(ctx.world_size)
    out = Path(out)
    work = out.with_name(out.name + ".partial")
    check_paths(out, work, resume=resume, overwrite=overwrite)
    dev = training_device(device, ctx)
    amp_dtype = resolve_precision(cfg.precision, dev)
    check_kernel(cfg.kernel, dev)

    start = _load_start_model(checkpoint, categories, bpe_dir=bpe_dir, arch=arch, prompt=prompt, seed=cfg.seed)
    model = start.model
    set_regularisation(model, cfg.dropout, cfg.drop_path)
    model.to(dev).train()
    run_info = {
        "package_version": __version__, "config": cfg.to_dict(), "categories": start.categories, "prompt": prompt,
        "source": _fingerprint(checkpoint), "world_size": ctx.world_size, "device": str(dev),
        "precision": str(amp_dtype or torch.float32).replace("torch.", ""),
    }
    run_info = json.loads(json.dumps(run_info))  # the form it has on disk (tuples become lists), for resume checks
    train, data, vocabulary = _training_setup(start, cfg, prompt, ctx, dev, amp_dtype)
    run = TrainingRun(cfg, ctx, dev, work, model, train, data)

    # Dropout and drop path draw from the global generator: seed it per rank so runs repeat (resume restores it).
    torch.manual_seed(cfg.seed + 7919 * (ctx.rank + 1))
    step = 0
    if resume:
        step = restore_state(run, RUN_CONFIG, run_info, RESUME_KEYS)
    elif ctx.is_main:
        start_work_dir(work, RUN_CONFIG, run_info)
    ctx.barrier()

    step, last_loss = train_steps(run, step, cfg.steps, progress, on_step)
    if ctx.is_main:
        final = AdaptedModel(model.eval(), start.tokenizer, start.categories, prompt,
                             metadata={**start.metadata, "adaptation": run_info, "steps": step,
                                       "final_loss": last_loss, "vocabulary": vocabulary})
        final.preprocessing = final.preprocessing.replace(**(preprocessing or {}))
        extra = {RUN_CONFIG: (work / RUN_CONFIG).read_bytes(), METRICS: (work / METRICS).read_bytes()}
        final.save_pretrained(out, overwrite=overwrite or resume, extra_files=extra)
        remove_work_dir(work)
    ctx.barrier()
    return AdaptResult(out if ctx.is_main else None, step, last_loss)


def _training_setup(start: AdaptedModel, cfg: AdaptConfig, prompt: str, ctx: dist_utils.DistContext,
                    dev: torch.device, amp_dtype: torch.dtype | None) -> tuple[TrainStep, Any, dict]:
    """(the step, the data source, what the model directory records as its vocabulary) of the run's mode:
    the paper's per-vocabulary word maps, or open-vocabulary ones when ``cfg.vocabulary`` is set."""
    wrap = lambda m: ctx.wrap(m, dev)  # noqa: E731
    if cfg.vocabulary is None:
        data = ArtificialMaps(start.model.num_classes, cfg.grid_max, seed=cfg.seed, rank=ctx.rank,
                              world_size=ctx.world_size, device=dev)
        train = wordmap_train_step(start.model, cfg, dev, amp_dtype, wrap=wrap)
        return train, data, {"mode": PER_VOCABULARY, "names": list(start.categories)}
    names = training_vocabulary(cfg.vocabulary, start.categories)
    train, data = vocabulary_train_step(start.model, start.tokenizer, names, prompt, cfg, dev, amp_dtype, wrap,
                                        rank=ctx.rank, world_size=ctx.world_size)
    return train, data, {"mode": OPEN_VOCABULARY, "names": names, "subset_size": [data.lo, data.hi]}
