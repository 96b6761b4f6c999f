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
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_torch_save, atomic_write_text
from ..devices import DeviceError, parse_device, torch_device
from ..model_dir import AdaptedModel
from ..modeling.layers import DropPath
from ..modeling.segofa import SegOFA
from ..tokenizer import DEFAULT_PROMPT
from ..version import __version__
from . import distributed as dist_utils
from .config import AdaptConfig
from .data import ArtificialMaps
from .ops import WordMapForward, wordmap_train_step
from .step import TrainStep, cosine_factor, resolve_precision

__all__ = ["AdaptResult", "AdaptationInterrupted", "StepCallback", "adapt", "cosine_factor", "resolve_precision",
           "set_regularisation", "training_device"]

log = logging.getLogger(__name__)

#: The former name of :class:`~.ops.WordMapForward`, which tests/test_wordmap_kernel.py imports from here.
WordMapStep = WordMapForward

CHECKPOINT = "checkpoint.pt"
RUN_CONFIG = "adapt_config.json"
METRICS = "metrics.jsonl"


class AdaptationInterrupted(RuntimeError):
    """Raised after Ctrl-C (or SIGTERM) once the state is saved; the run continues with ``resume=True``."""


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


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a checkpoint is never half a step."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._previous: dict[int, Any] = {}  # the handlers to put back

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the default handlers
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        if self.raised is not None:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.raised = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


#: ``on_step(step, info)``: called on every process after each optimizer step with the number of steps done
#: and ``{"loss": tensor, "grad_norm": tensor, "lr": float}`` (``lr``: the rate after the schedule's update, as
#: logged). Reading a tensor syncs with the GPU; an exception it raises ends the run at once, without saving.
StepCallback = Callable[[int, dict], None]


@dataclass
class _Run:
    """What the loop works with."""

    cfg: AdaptConfig
    ctx: dist_utils.DistContext
    dev: torch.device
    work: Path
    model: SegOFA
    train: TrainStep
    data: ArtificialMaps


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
    _check_paths(out, work, resume=resume, overwrite=overwrite)
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
    train = wordmap_train_step(model, cfg, dev, amp_dtype, wrap=lambda m: ctx.wrap(m, dev))
    data = ArtificialMaps(model.num_classes, cfg.grid_max, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size,
                          device=dev)
    run = _Run(cfg, ctx, dev, work, model, train, data)

    # Dropout and drop path draw from the global generator: seed it per rank so runs repeat (resume restores it).
    torch.manual_seed(cfg.seed + 7919 * (ctx.rank + 1))
    step = 0
    if resume:
        step = _restore(run, run_info)
    elif ctx.is_main:
        if work.exists():  # an interrupted run that --overwrite discards (_check_paths refused it otherwise)
            _remove_work_dir(work)
        work.mkdir(parents=True)
        atomic_write_text(work / RUN_CONFIG, json.dumps(run_info, indent=2) + "\n")
        (work / METRICS).write_text("")
    ctx.barrier()

    step, last_loss = _train(run, step, progress, on_step)
    if ctx.is_main:
        final = AdaptedModel(model.eval(), start.tokenizer, start.categories, prompt,
                             metadata={**start.metadata, "adaptation": run_info, "steps": step,
                                       "final_loss": last_loss})
        final.preprocessing = final.preprocessing.replace(**(preprocessing or {}))
        extra = {RUN_CONFIG: (work / RUN_CONFIG).read_bytes(), METRICS: (work / METRICS).read_bytes()}
        final.save_pretrained(out, overwrite=overwrite or resume, extra_files=extra)
        _remove_work_dir(work)
    ctx.barrier()
    return AdaptResult(out if ctx.is_main else None, step, last_loss)


def _train(run: _Run, step: int, progress: bool, on_step: StepCallback | None) -> tuple[int, float]:
    """Steps from ``step`` to the end (or to Ctrl-C); returns the steps done and the last logged loss."""
    cfg, ctx = run.cfg, run.ctx
    last_loss = float("nan")
    bar = _progress(cfg.steps, step, enabled=progress and ctx.is_main)
    t0, samples_since = time.perf_counter(), 0
    with _StopFlag() as stop:
        while step < cfg.steps:
            loss, grad_norm = run.train(run.data.sample(cfg.batch_size))  # this rank's slice of the global batch
            step += 1
            samples_since += cfg.batch_size
            if on_step is not None:
                on_step(step, {"loss": loss, "grad_norm": grad_norm, "lr": run.train.lr})
            if step % cfg.log_every == 0 or step == cfg.steps:
                last_loss = ctx.mean(loss)  # the one host sync, every log_every steps
                elapsed = time.perf_counter() - t0
                record = {"step": step, "loss": last_loss, "lr": run.train.lr, "grad_norm": float(grad_norm),
                          "samples_per_s": samples_since / max(elapsed, 1e-9)}
                t0, samples_since = time.perf_counter(), 0
                if ctx.is_main:
                    with open(run.work / METRICS, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}")
            bar.update(1)
            should_stop = ctx.any(stop.raised is not None)
            if step % cfg.checkpoint_every == 0 or should_stop:
                _save(run, step)
            if should_stop and step < cfg.steps:
                bar.close()
                raise AdaptationInterrupted(
                    f"stopped at step {step}/{cfg.steps}; the state is saved in {run.work}. "
                    f"Continue with the same command plus --resume."
                )
    bar.close()
    return step, last_loss


def _check_paths(out: Path, work: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse paths that would lose data; changes nothing on disk."""
    if resume:
        if not (work / CHECKPOINT).is_file():
            raise FileNotFoundError(f"nothing to resume: {work / CHECKPOINT} does not exist")
        return
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another --out or pass --overwrite")
    if work.exists() and not overwrite:
        raise FileExistsError(f"an interrupted run is in {work}: pass --resume to continue it, "
                              "or --overwrite to start again")


def _remove_work_dir(work: Path) -> None:
    import shutil

    shutil.rmtree(work, ignore_errors=True)


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="adapt", disable=not enabled, dynamic_ncols=True)


def _rng_state(dev: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _save(run: _Run, step: int) -> None:
    per_rank = run.ctx.gather_objects({"data": run.data.state_dict(), "rng": _rng_state(run.dev)})
    if not run.ctx.is_main:
        return
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    atomic_torch_save({
        "step": step,
        # Frozen tensors are reloaded from the source checkpoint; only what training changes is saved.
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items() if k in trainable},
        **run.train.state_dict(),  # optimizer, scheduler, scaler
        "ranks": per_rank,
    }, run.work / CHECKPOINT)


def _restore(run: _Run, run_info: dict) -> int:
    path = run.work / CHECKPOINT
    saved_info = json.loads((path.parent / RUN_CONFIG).read_text())
    for key in ("config", "categories", "prompt", "source", "world_size"):
        if saved_info.get(key) != run_info.get(key):
            raise ValueError(f"cannot resume: the interrupted run used a different {key} "
                             f"({saved_info.get(key)!r} then, {run_info.get(key)!r} now)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing = run.model.load_state_dict(state["model"], strict=False)
    if missing.unexpected_keys:
        raise ValueError(f"{path} holds unknown tensors {missing.unexpected_keys[:4]}")
    run.train.load_state_dict(state)
    mine = state["ranks"][run.ctx.rank]
    run.data.load_state_dict(mine["data"])
    torch.set_rng_state(mine["rng"]["cpu"])
    if "cuda" in mine["rng"] and run.dev.type == "cuda":
        torch.cuda.set_rng_state(mine["rng"]["cuda"], run.dev)
    step = int(state["step"])
    if run.ctx.is_main:  # metrics logged after the checkpoint belong to steps that will run again
        lines = (path.parent / METRICS).read_text().splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln)["step"] <= step]
        atomic_write_text(path.parent / METRICS, "".join(ln + "\n" for ln in kept))
    return step
