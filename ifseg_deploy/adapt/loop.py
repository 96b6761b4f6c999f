"""The training loop every trainer of this package shares: run state in ``<out>.partial/``, checkpoints with every
random stream (bit-exact ``resume`` on the CPU), Ctrl-C between steps, metrics and the progress bar.

It knows nothing about the data: a run trains a :class:`~.step.TrainStep` on batches of any :class:`DataSource`
(the artificial word maps of image-free adaptation, the labelled image crops of self-training).
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from ..atomic import atomic_torch_save, atomic_write_text
from ..modeling.segofa import SegOFA
from . import distributed as dist_utils
from .config import AdaptConfig
from .step import TrainStep

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"

#: ``on_step(step, info)``: called on every process after each optimizer step with the number of steps done
#: and ``{"loss": tensor, "grad_norm": tensor, "lr": float}`` (``lr``: the rate after the schedule's update, as
#: logged). Reading a tensor syncs with the GPU; an exception it raises ends the run at once, without saving.
StepCallback = Callable[[int, dict], None]


class TrainingInterrupted(RuntimeError):
    """Raised after Ctrl-C (or SIGTERM) once the state is saved; the run continues with ``resume=True``."""


class DataSource(Protocol):
    """What the loop draws batches from: this rank's share of a global batch, and a state for checkpoints."""

    def sample(self, batch: int) -> tuple[torch.Tensor, ...]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class TrainingRun:
    """What the loop works with."""

    cfg: AdaptConfig
    ctx: dist_utils.DistContext
    dev: torch.device
    work: Path
    model: SegOFA
    train: TrainStep
    data: DataSource
    desc: str = "adapt"
    #: extra progress-bar fields (e.g. the pseudo-labels' confidence coverage)
    postfix: dict[str, str] | None = None


class StopFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps, so a checkpoint is never half a step."""

    def __init__(self) -> None:
        self.raised: str | None = None
        self._previous: dict[int, Any] = {}  # the handlers to put back

    def __enter__(self) -> StopFlag:
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


def check_paths(out: Path, work: Path, *, resume: bool, overwrite: bool) -> None:
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


def start_work_dir(work: Path, run_config_name: str, run_info: dict) -> None:
    """A fresh ``OUT.partial/`` with the run configuration and an empty metrics log (main process only)."""
    if work.exists():  # an interrupted run that --overwrite discards (check_paths refused it otherwise)
        remove_work_dir(work)
    work.mkdir(parents=True)
    atomic_write_text(work / run_config_name, json.dumps(run_info, indent=2) + "\n")
    (work / METRICS).write_text("")


def remove_work_dir(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)


def train_steps(run: TrainingRun, step: int, until: int, progress: bool, on_step: StepCallback | None
                ) -> tuple[int, float]:
    """Steps from ``step`` to ``until`` (or to Ctrl-C); returns the steps done and the last logged loss.

    Checkpoints every ``cfg.checkpoint_every`` steps and when stopped."""
    cfg, ctx = run.cfg, run.ctx
    last_loss = float("nan")
    bar = _progress(until, step, run.desc, enabled=progress and ctx.is_main)
    t0, samples_since = time.perf_counter(), 0
    with StopFlag() as stop:
        while step < until:
            loss, grad_norm = run.train(run.data.sample(cfg.batch_size))  # this rank's slice of the global batch
            step += 1
            samples_since += cfg.batch_size
            if on_step is not None:
                on_step(step, {"loss": loss, "grad_norm": grad_norm, "lr": run.train.lr})
            if step % cfg.log_every == 0 or step == until:
                last_loss = ctx.mean(loss)  # the one host sync, every log_every steps
                elapsed = time.perf_counter() - t0
                record = {"step": step, "loss": last_loss, "lr": run.train.lr, "grad_norm": float(grad_norm),
                          "samples_per_s": samples_since / max(elapsed, 1e-9)}
                t0, samples_since = time.perf_counter(), 0
                if ctx.is_main:
                    with open(run.work / METRICS, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{record['lr']:.2e}", **(run.postfix or {}))
            bar.update(1)
            should_stop = ctx.any(stop.raised is not None)
            if step % cfg.checkpoint_every == 0 or should_stop:
                save_state(run, step)
            if should_stop and step < until:
                bar.close()
                raise TrainingInterrupted(
                    f"stopped at step {step}/{until}; the state is saved in {run.work}. "
                    f"Continue with the same command plus --resume."
                )
    bar.close()
    return step, last_loss


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc=desc, disable=not enabled, dynamic_ncols=True)


def _rng_state(dev: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def save_state(run: TrainingRun, step: int) -> None:
    """The checkpoint: trainable weights, optimizer/schedule/scaler, and every rank's data and RNG state."""
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


def restore_state(run: TrainingRun, run_config_name: str, run_info: dict, keys: Sequence[str]) -> int:
    """Load the checkpoint of an interrupted run whose ``keys`` of the run configuration match; returns its
    step and drops the metrics logged after it."""
    path = run.work / CHECKPOINT
    saved_info = json.loads((path.parent / run_config_name).read_text())
    for key in keys:
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
