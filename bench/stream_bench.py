"""Video throughput: sequential (read a frame, then segment it) against pipelined (``Segmenter.stream``: a reader
thread decodes and preprocesses ahead through a queue), per backend and input size, on a synthetic video.

    python -m bench.stream_bench --model DIR --onnx 256x256=model.onnx --onnx 512x683=model.683.onnx \\
        --frames 40 --rounds 2 --out stream_bench.json

Each case (backend x size) runs ``--rounds`` times, its sequential and pipelined runs interleaved (alternating
which goes first), so that both see the same load on a shared machine. Per frame it records the time from the
start of its read to its labels (sequential) or the sum of its stages (pipelined; the queue wait is reported
apart as latency), and per run the frames per second over the whole video, warm-up frames left out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

#: model input size -> the frame size of the synthetic video that the paper's resize turns into it
FRAME_SIZES = {(256, 256): (256, 256), (512, 683): (480, 640)}
WARMUP = 3


def write_pan_video(path: Path, frames: int, size: tuple[int, int]) -> Path:
    """A synthetic-world scene panned across ``frames`` frames of ``size`` (H, W), mp4v in AVI at 25 fps."""
    import cv2

    from ifseg_deploy.synthetic.world import make_scene

    h, w = size
    scene, _ = make_scene(11, size=(h, w + 2 * frames))
    out = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    for i in range(frames):
        out.write(np.ascontiguousarray(scene[:, 2 * i: 2 * i + w, ::-1]))
    out.release()
    return path


def sequential(seg: Any, video: Path) -> dict[str, Any]:
    """Read a frame, segment it, read the next: the loop without a reader thread."""
    from ifseg_deploy.runtime.sources import open_source

    per_frame, stages = [], {"read": 0.0, "segment": 0.0}
    with open_source(video) as src:
        frames = iter(src)
        t_start = None
        for i in range(10**9):
            t0 = time.perf_counter()
            frame = next(frames, None)
            if frame is None:
                break
            t1 = time.perf_counter()
            seg(frame.image)
            t2 = time.perf_counter()
            if i == WARMUP:
                t_start = t0
            if i >= WARMUP:
                per_frame.append(t2 - t0)
                stages["read"] += t1 - t0
                stages["segment"] += t2 - t1
        elapsed = time.perf_counter() - t_start
    n = len(per_frame)
    return {"fps": n / elapsed, **_pcts(per_frame), "stage_mean_ms": {k: 1e3 * v / n for k, v in stages.items()}}


def pipelined(seg: Any, video: Path, batch: int = 1) -> dict[str, Any]:
    """``Segmenter.stream``: the reader thread reads and preprocesses ahead."""
    per_frame, latency, t_start, stages = [], [], None, dict.fromkeys(("read", "preprocess", "infer", "postprocess"),
                                                                        0.0)
    with seg.stream(video, batch=batch) as stream:
        for r in stream:
            if r.index == WARMUP - 1:
                t_start = time.perf_counter()
            if r.index >= WARMUP:
                per_frame.append(sum(r.timings.values()))
                latency.append(r.latency)
                for k in stages:
                    stages[k] += r.timings[k]
        elapsed = time.perf_counter() - t_start
    n = len(per_frame)
    return {"fps": n / elapsed, **_pcts(per_frame), **_pcts(latency, "latency"),
            "stage_mean_ms": {k: 1e3 * v / n for k, v in stages.items()}}


def _pcts(seconds: list[float], name: str = "frame") -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {f"{name}_p50_ms": float(np.percentile(ms, 50)), f"{name}_p99_ms": float(np.percentile(ms, 99))}


def load(backend: str, path: str, size: tuple[int, int], threads: int, device: str) -> Any:
    from ifseg_deploy.runtime.segmenter import Segmenter

    options = {"threads": threads} if backend == "onnxruntime" else {}
    return Segmenter.from_pretrained(path, backend=backend, device=device, short_side=min(size), **options)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cases = [("torch", args.model, size) for size in FRAME_SIZES]
    cases += [("onnxruntime", path, size) for size, path in args.onnx.items()]
    rows = []
    for backend, path, size in cases:
        video = write_pan_video(work / f"pan_{size[0]}x{size[1]}.avi", args.frames, FRAME_SIZES[size])
        seg = load(backend, path, size, args.threads, args.device)
        assert tuple(seg.input_size(*FRAME_SIZES[size])) == size, (seg.input_size(*FRAME_SIZES[size]), size)
        for rnd in range(args.rounds):
            order = ("sequential", "pipelined") if rnd % 2 == 0 else ("pipelined", "sequential")
            for mode in order:
                result = sequential(seg, video) if mode == "sequential" else pipelined(seg, video)
                rows.append({"backend": backend, "size": f"{size[0]}x{size[1]}", "mode": mode, "round": rnd,
                             **result})
                print(json.dumps(rows[-1]), flush=True)
        seg.close()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per case and mode, the median over rounds; the gain = pipelined fps / sequential fps."""
    lines = ["| backend | input | mode | fps | per-frame p50 / p99 ms | latency p50 / p99 ms | stage means ms | "
             "gain |", "|---|---|---|---|---|---|---|---|"]
    cases = sorted({(r["backend"], r["size"]) for r in rows}, key=lambda c: (c[1], c[0]))
    for backend, size in cases:
        fps = {}
        for mode in ("sequential", "pipelined"):
            rs = [r for r in rows if (r["backend"], r["size"], r["mode"]) == (backend, size, mode)]
            fps[mode] = float(np.median([r["fps"] for r in rs]))
            med = {k: float(np.median([r[k] for r in rs])) for k in rs[0] if k.endswith("_ms") and k != "stage_mean_ms"}
            lat = (f"{med['latency_p50_ms']:.0f} / {med['latency_p99_ms']:.0f}" if "latency_p50_ms" in med
                   else "= per-frame")
            stages = ", ".join(f"{k} {np.median([r['stage_mean_ms'][k] for r in rs]):.1f}"
                               for k in rs[0]["stage_mean_ms"])
            gain = f"{fps['pipelined'] / fps['sequential']:.2f}x" if mode == "pipelined" else ""
            lines.append(f"| {backend} | {size} | {mode} | {fps[mode]:.2f} | {med['frame_p50_ms']:.1f} / "
                         f"{med['frame_p99_ms']:.1f} | {lat} | {stages} | {gain} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="adapted-model directory (torch backend)")
    p.add_argument("--onnx", action="append", default=[], metavar="HxW=PATH",
                   help="an ONNX export of the model for that input size (repeat)")
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (both backends)")
    p.add_argument("--work", default="/tmp/stream_bench")
    p.add_argument("--out", default=None, help="write the rows as JSON here [default: WORK/rows.json]")
    args = p.parse_args(argv)
    args.onnx = {tuple(int(v) for v in s.split("=", 1)[0].split("x")): s.split("=", 1)[1] for s in args.onnx}
    rows = run(args)
    Path(args.out or Path(args.work) / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
