"""Adaptation throughput: ``python -m ifseg_deploy.bench.adapt_throughput [--preset tiny --steps 10]``.

Runs real adaptation steps (the trainer's own :class:`~ifseg_deploy.adapt.step.TrainStep`: word-map forward under
autocast, loss, AdamW, clipping, gradient scaler and cosine schedule) on a randomly initialised model of a preset
and reports samples/s and the share of step time spent making the artificial data (category grids, the word-map
embeddings and the 512 x 512 targets) against the transformer's forward/backward and the optimizer. On a GPU the
phases are timed with CUDA events; on the CPU with ``perf_counter``. The official pipeline built word maps and
targets with per-sample Python loops on the CPU; here they are tensor ops on the model's device, which is what
the "data share" column measures.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from ..adapt.config import AdaptConfig
from ..adapt.data import ArtificialMaps
from ..adapt.ops import wordmap_train_step
from ..adapt.step import resolve_precision
from ..adapt.trainer import set_regularisation
from ..devices import torch_device
from ..modeling.segofa import SegOFA
from ..presets import get_preset


class _Clock:
    """Phase timer: CUDA events on a GPU (no sync inside the step), perf_counter + nothing to sync on a CPU.
    Marks with the same name add up (the data phase is marked twice: after the targets and after the word-map
    embeddings, which the step's forward makes)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, Any]] = []  # (phase, CUDA event or perf_counter seconds)

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def phases(self) -> dict[str, float]:
        """Milliseconds per phase since the last call (a phase is named by the mark that ends it)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            ms = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
            out[name] = out.get(name, 0.0) + ms
        self.marks.clear()
        return out


def random_model(preset: str, num_classes: int, seed: int = 0) -> SegOFA:
    """A SegOFA of ``preset`` with PyTorch's default random init and a prompt of ``num_classes`` one-token names."""
    torch.manual_seed(seed)
    arch = get_preset(preset).replace(vocab_rows=num_classes + 8)
    model = SegOFA(arch, num_classes=num_classes)
    model.set_prompt([0, *range(4, 4 + num_classes), 2], [[4 + c] for c in range(num_classes)])
    return model


def train_and_time(model: SegOFA, cfg: AdaptConfig, device: torch.device, warmup: int, steps: int
                   ) -> dict[str, float]:
    """Train ``model`` for ``warmup + steps`` steps as the trainer does (``cfg``'s regularisation, optimizer and
    schedule; data seeded by ``cfg.seed``) and return the milliseconds per phase summed over the last ``steps``."""
    set_regularisation(model, cfg.dropout, cfg.drop_path)
    model.to(device).train()
    train = wordmap_train_step(model, cfg, device, resolve_precision(cfg.precision, device))
    data = ArtificialMaps(model.num_classes, cfg.grid_max, seed=cfg.seed, device=device)
    clock = _Clock(device)
    # The encoder's first call ends the word-map embedding, which the step's forward computes: data, not model.
    hook = model.encoder.register_forward_pre_hook(lambda module, args: clock.mark("data"))
    totals: dict[str, float] = {}
    try:
        for i in range(warmup + steps):
            clock.mark("start")
            train(data.sample(cfg.batch_size), clock=clock.mark)
            phases = clock.phases()
            if i >= warmup:
                for k, v in phases.items():
                    totals[k] = totals.get(k, 0.0) + v
    finally:
        hook.remove()
    return totals


def run_benchmark(preset: str = "tiny", num_classes: int = 150, batch: int = 4, steps: int = 10, warmup: int = 2,
                  device: str | None = None, precision: str = "auto", kernel: str = "auto", loss: str = "chunked",
                  seed: int = 0) -> dict:
    """Time ``steps`` adaptation steps after ``warmup``; returns per-phase milliseconds and samples/s."""
    dev = torch_device(device)
    cfg = AdaptConfig(steps=warmup + steps, batch_size=batch, precision=precision, kernel=kernel, loss=loss,
                      seed=seed)
    cfg.validate()
    amp = resolve_precision(precision, dev)
    model = random_model(preset, num_classes, seed)
    per_step = {k: v / steps for k, v in train_and_time(model, cfg, dev, warmup, steps).items()}
    step_ms = sum(per_step.values())
    return {
        "preset": preset, "classes": num_classes, "batch": batch, "steps": steps, "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": str(amp or torch.float32).replace("torch.", ""), "kernel": kernel, "loss": loss,
        "torch_threads": torch.get_num_threads(),
        "phase_ms": per_step, "step_ms": step_ms, "samples_per_s": batch / (step_ms / 1e3),
        "data_share": per_step.get("data", 0.0) / step_ms,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device")
    p.add_argument("--precision", default="auto")
    p.add_argument("--kernel", default="auto")
    p.add_argument("--loss", default="chunked", choices=["chunked", "reference"])
    p.add_argument("--json", dest="json_path")
    a = p.parse_args(argv)
    res = run_benchmark(a.preset, a.classes, a.batch, a.steps, a.warmup, a.device, a.precision, a.kernel, a.loss)
    print(f"{res['preset']} on {res['device_name']} ({res['precision']}), batch {res['batch']}, "
          f"{res['classes']} classes: {res['samples_per_s']:.2f} samples/s, step {res['step_ms']:.1f} ms")
    for k, v in res["phase_ms"].items():
        print(f"  {k:10s} {v:9.1f} ms  ({v / res['step_ms']:6.1%})")
    if a.json_path:
        with open(a.json_path, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
