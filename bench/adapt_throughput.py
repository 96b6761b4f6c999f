"""Adaptation throughput: ``python -m ifseg_deploy.bench.adapt_throughput [--preset tiny --steps 10]``.

Runs real adaptation steps (the trainer's own ``WordMapStep``, loss, AdamW and clipping) on a randomly
initialised model of a preset and reports samples/s and the share of step time spent making the artificial data
(category grids, the word-map embeddings and the 512 x 512 targets) against the transformer's forward/backward
and the optimizer. On a GPU the phases are timed with CUDA events; on the CPU with ``perf_counter``. The
official pipeline built word maps and targets with per-sample Python loops on the CPU; here they are tensor ops on
the model's device, which is what the "data share" column measures.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from ..adapt.config import AdaptConfig
from ..adapt.data import ArtificialMaps
from ..adapt.ops import segmentation_loss, wordmap_targets, wordmap_tokens
from ..adapt.trainer import resolve_precision, set_regularisation
from ..modeling.segofa import SegOFA
from ..presets import get_preset


class _Clock:
    """Phase timer: CUDA events on a GPU (no sync inside the step), perf_counter + nothing to sync on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append((name, ev))
        else:
            self.marks.append((name, time.perf_counter()))

    def phases(self) -> dict[str, float]:
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, a), (name, b) in zip(self.marks, self.marks[1:], strict=False):
            ms = a.elapsed_time(b) if self.cuda else (b - a) * 1e3
            out[name] = out.get(name, 0.0) + ms
        return out


def run_benchmark(preset: str = "tiny", num_classes: int = 150, batch: int = 4, steps: int = 10, warmup: int = 2,
                  device: str | None = None, precision: str = "auto", kernel: str = "auto", loss: str = "chunked",
                  seed: int = 0) -> dict:
    """Time ``steps`` adaptation steps after ``warmup``; returns per-phase milliseconds and samples/s."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = AdaptConfig(batch_size=batch, precision=precision, kernel=kernel, loss=loss, seed=seed)
    amp = resolve_precision(precision, dev)
    torch.manual_seed(seed)
    arch = get_preset(preset).replace(vocab_rows=num_classes + 8)
    model = SegOFA(arch, num_classes=num_classes)
    src = [0, *range(4, 4 + num_classes), 2]
    model.set_prompt(src, [[4 + c] for c in range(num_classes)])
    set_regularisation(model, cfg.dropout, cfg.drop_path)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    data = ArtificialMaps(num_classes, cfg.grid_max, seed=seed, device=dev)
    totals: dict[str, float] = {}
    for i in range(warmup + steps):
        clock = _Clock(dev)
        clock.mark("start")
        grid, sizes = data.sample(batch)
        tokens = wordmap_tokens(model, grid, sizes, cfg.wordmap_size, kernel)
        target = wordmap_targets(grid, sizes, cfg.target_size)
        clock.mark("data")
        with torch.autocast(dev.type, dtype=amp) if amp else nullcontext():
            logits = model.run_tokens(tokens, embedded=True, check_padding=False).logits
        lossv = segmentation_loss(logits.float(), target, loss)
        clock.mark("forward")
        opt.zero_grad(set_to_none=True)
        lossv.backward()
        clock.mark("backward")
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_norm)
        opt.step()
        clock.mark("optimizer")
        if i >= warmup:
            for k, v in clock.phases().items():
                totals[k] = totals.get(k, 0.0) + v
    per_step = {k: v / steps for k, v in totals.items()}
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
