"""The cost of changing the vocabulary at run time (issue 13), per backend.

For an open-vocabulary model directory (torch) and its ``export --open-vocabulary`` file (ONNX Runtime), it
alternates two vocabularies of new names and times ``Segmenter.set_categories`` alone, the first run after a
change (an engine may re-plan for the new input shapes), and a run with the vocabulary unchanged.

    python -m ifseg_deploy.bench.vocabulary_switch --model open_model --onnx open_model.onnx --size 64x96
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

VOCABULARIES = (["frisbee", "tree", "concrete wall", "sand"], ["sky", "person", "water", "brick", "road"])


def _ms(f: Any) -> float:
    t = time.perf_counter()
    f()
    return 1000 * (time.perf_counter() - t)


def measure(seg: Any, pixels: np.ndarray, calls: int, vocabularies: tuple[list[str], ...] = VOCABULARIES
            ) -> dict[str, Any]:
    """Median and max (ms) of set_categories, of the first run after it, and of a run after that."""
    switch, first, steady = [], [], []
    for i in range(calls):
        names = vocabularies[i % len(vocabularies)]
        switch.append(_ms(lambda names=names: seg.set_categories(names)))
        first.append(_ms(lambda: seg.backend.probs(pixels)))
        steady.append(_ms(lambda: seg.backend.probs(pixels)))
    return {name: {"median_ms": round(statistics.median(v), 3), "max_ms": round(max(v), 3)}
            for name, v in (("set_categories", switch), ("first_run", first), ("steady_run", steady))}


def main(argv: list[str] | None = None) -> None:
    import torch

    from ifseg_deploy.runtime.input_spec import parse_size
    from ifseg_deploy.runtime.segmenter import Segmenter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="open-vocabulary model directory (torch backend)")
    ap.add_argument("--onnx", help="its export --open-vocabulary file (onnxruntime backend)")
    ap.add_argument("--size", default="64x96", help="input size HxW the runs use")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    h, w = parse_size(args.size)
    pixels = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    report: dict[str, Any] = {"size": [h, w], "calls": args.calls, "threads": args.threads}
    if args.model:
        report["torch"] = measure(Segmenter.from_pretrained(args.model), pixels, args.calls)
    if args.onnx:
        seg = Segmenter.from_pretrained(args.onnx, backend="onnxruntime", threads=args.threads)
        report["onnxruntime"] = measure(seg, pixels, args.calls)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
