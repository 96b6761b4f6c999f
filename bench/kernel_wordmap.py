"""Benchmark of the fused word-map kernel: ``python -m ifseg_deploy.bench.kernel_wordmap``.

Compares, on one random batch of IFSeg category grids (U, V uniform in 1..32, classes uniform):

* ``triton``: the fused kernel (``wordmap_embed(impl="triton")``);
* ``torch``: the PyTorch reference (``wordmap_embed_reference``), eager;
* ``torch.compile``: ``torch.compile`` of the reference's computation;
* ``official``: the path IFSeg used, ``EmbeddingBag(mode="mean")`` over the concatenated name tokens of every
  cell with offsets, then + type embedding and ``F.layer_norm``. Only its device part is timed: the token stream
  and offsets are built beforehand (the official code builds them in a Python loop on the CPU, so its real cost
  is higher).

Every row, ``torch`` included, is checked against an independent float64 ground truth: each sample's U x V
block resized with ``F.interpolate(mode="nearest")``, ``F.embedding`` of the class table, + type embedding,
``F.layer_norm``, all in float64, and its gradients by autograd (``max_abs_diff_*`` / ``max_rel_diff_grads``).
On a CUDA device it also times the forward and the forward + backward with CUDA events, and reports the
forward's effective bandwidth next to the device-to-device copy bandwidth measured in the same run. On the CPU it
checks correctness only: CPU timings say nothing about a GPU kernel, and the Triton kernel can only run there in
its interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..devices import torch_device

BYTES_FORMULA = ("bytes_fwd = B*H*W*d*out_elsize (output write) + R*d*table_elsize (R = distinct class rows the "
                 "word map touches) + B*S*S*grid_elsize + B*2*sizes_elsize + 3*d*param_elsize; GB/s = bytes_fwd / "
                 "time. copy GB/s = 2 * out_bytes / time of torch.empty_like(out).copy_(out) (read + write)")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _inputs(batch: int, classes: int, dim: int, vocab: int, dtype: torch.dtype, device: torch.device, seed: int):
    """Grids, sizes, name token lists, the token table, the class table (= mean of each name's token rows, as
    IFSeg builds it) and the trainable parameters (fp32 masters)."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 33, (batch, 2), generator=g)
    grid = torch.randint(0, classes, (batch, 32, 32), generator=g)
    lengths = torch.randint(1, 5, (classes,), generator=g)  # 1-4 sub-word tokens per name, as ADE's names
    name_tokens = torch.randint(4, vocab, (int(lengths.sum()),), generator=g)
    token_table = (torch.randn(vocab, dim, generator=g) * dim ** -0.5).to(dtype)
    name_offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    class_table = F.embedding_bag(name_tokens, token_table.float(), name_offsets, mode="mean").to(dtype)
    params = [torch.randn(dim, generator=g) * 0.1, 1 + 0.1 * torch.randn(dim, generator=g),
              0.1 * torch.randn(dim, generator=g)]
    to = dict(device=device)
    return dict(grid=grid.to(**to), sizes=sizes.to(**to), class_table=class_table.to(**to),
                token_table=token_table.to(**to), name_tokens=name_tokens, lengths=lengths,
                params=[p.to(**to).requires_grad_() for p in params])


def _official_stream(ids: torch.Tensor, name_tokens: torch.Tensor, lengths: torch.Tensor, device: torch.device):
    """What IFSeg's dataset + collate hand to the GPU: the cells' name tokens concatenated, and bag offsets
    (built with a Python loop over cells, as the official dataset does; outside the timed region here)."""
    names = torch.split(name_tokens, lengths.tolist())
    cells = ids.flatten().tolist()
    tokens = torch.cat([names[c] for c in cells])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths[cells].cumsum(0)[:-1]])
    return tokens.to(device), offsets.to(device)


def _impls(data: dict, compile_ref: bool) -> dict[str, Callable | str]:
    """name -> fn(params) returning the (B, 32, 32, d) word map, or a string saying why it cannot run here."""
    from ifseg_deploy.kernels.wordmap import resolve_impl, wordmap_embed
    from ifseg_deploy.kernels.wordmap_reference import nearest_ids, wordmap_embed_core, wordmap_embed_reference

    grid, sizes, table = data["grid"], data["sizes"], data["class_table"]
    dev = table.device
    impls: dict[str, Callable | str] = {}
    try:
        resolve_impl("triton", dev.type)
        from ifseg_deploy.kernels.wordmap_triton import interpret_mode

        if dev.type != "cuda" and not interpret_mode():
            raise RuntimeError("CPU tensors and triton not in interpreter mode (set TRITON_INTERPRET=1 before "
                               "triton is imported)")
        impls["triton"] = lambda p: wordmap_embed(grid, sizes, table, *p, impl="triton")
    except RuntimeError as exc:
        impls["triton"] = f"skipped: {exc}"
    impls["torch"] = lambda p: wordmap_embed_reference(grid, sizes, table, *p)
    if compile_ref:
        compiled = torch.compile(wordmap_embed_core)
        impls["torch.compile"] = lambda p: compiled(grid, sizes, table, *p, 32, 32, 1e-5)
    else:
        impls["torch.compile"] = "skipped: --no-compile"
    tokens, offsets = _official_stream(nearest_ids(grid, sizes), data["name_tokens"], data["lengths"], dev)
    token_table = data["token_table"]
    b, d = grid.shape[0], table.shape[1]

    def official(p):
        bags = F.embedding_bag(tokens, token_table, offsets, mode="mean").view(b, 32, 32, d)
        t, w, bias = (x.to(token_table.dtype) for x in p)  # IFSeg's --fp16 model: everything in half
        return F.layer_norm(bags + t, (d,), w, bias, 1e-5)

    impls["official"] = official
    return impls


def _truth(data: dict, params: list[torch.Tensor], dy: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The word map and its parameter gradients in float64, composed from F.interpolate, F.embedding and
    F.layer_norm per sample: shares no code with the implementations it checks."""
    grid, sizes, table = data["grid"].cpu(), data["sizes"].cpu(), data["class_table"].cpu().double()
    t, w, bias = (p.detach().cpu().double().requires_grad_() for p in params)
    outs = []
    for g, (u, v) in zip(grid, sizes.tolist()):
        ids = F.interpolate(g[:u, :v].double()[None, None], size=(32, 32), mode="nearest")[0, 0].long()
        outs.append(F.layer_norm(F.embedding(ids, table) + t, (table.shape[1],), w, bias, 1e-5))
    out = torch.stack(outs)
    grads = torch.autograd.grad(out, (t, w, bias), dy.cpu().double())
    return out, list(grads)


def _time_cuda(fn: Callable[[], object], iters: int, warmup: int, repeats: int = 5) -> float:
    """Milliseconds per call: CUDA events around ``iters`` back-to-back calls, median of ``repeats``."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / iters)
    return statistics.median(times)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def run_benchmark(batch: int = 4, classes: int = 150, dim: int = 768, iters: int = 100, warmup: int = 10,
                  dtype: str | None = None, vocab: int = 59458, device: str | None = None, seed: int = 0,
                  compile_ref: bool = True) -> dict:
    """Run the comparison and return a JSON-able dict (see the module docstring). ``dtype`` (fp32/fp16/bf16)
    defaults to fp16 on a GPU (IFSeg's training precision) and fp32 on the CPU."""
    dev = torch_device(device)
    dtype = dtype or ("fp16" if dev.type == "cuda" else "fp32")
    data = _inputs(batch, classes, dim, vocab, DTYPES[dtype], dev, seed)
    params = data["params"]
    impls = _impls(data, compile_ref)
    from ifseg_deploy.kernels.wordmap_reference import nearest_ids

    ids = nearest_ids(data["grid"], data["sizes"])
    out_el = torch.finfo(DTYPES[dtype]).bits // 8
    touched = int(ids.unique().numel())
    bytes_fwd = (batch * 32 * 32 * dim * out_el + touched * dim * out_el + data["grid"].numel() * 8
                 + data["sizes"].numel() * 8 + 3 * dim * 4)
    timing = dev.type == "cuda"
    report: dict = {
        "device": torch.cuda.get_device_name(dev) if timing else "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "config": dict(batch=batch, classes=classes, dim=dim, dtype=dtype, vocab=vocab, iters=iters, warmup=warmup,
                       seed=seed, out_hw=[32, 32], touched_rows=touched),
        "mode": "timing (CUDA events)" if timing else
                "correctness only: no CUDA device here; CPU timings say nothing about a GPU kernel",
        "bytes_formula": BYTES_FORMULA,
        "bytes_fwd": bytes_fwd,
        "results": {},
    }
    dy = torch.randn(batch, 32, 32, dim, generator=torch.Generator().manual_seed(seed + 1)).to(dev, DTYPES[dtype])
    true_out, true_grads = _truth(data, params, dy)
    for name, fn in impls.items():
        if isinstance(fn, str):
            report["results"][name] = {"status": fn}
            continue
        entry: dict = {}
        try:
            out = fn(params)
            grads = torch.autograd.grad(out, params, dy.to(out.dtype))
        except Exception as exc:  # report, do not abort the other rows (e.g. torch.compile without a compiler)
            report["results"][name] = {"status": f"failed: {type(exc).__name__}: {exc}"[:500]}
            continue
        entry["max_abs_diff_fwd"] = _max_diff(out.cpu(), true_out)
        entry["max_abs_diff_grads"] = [_max_diff(a.cpu(), b) for a, b in zip(grads, true_grads)]
        # gradients are sums over B*H*W rows: relative to their size, the error says more
        entry["max_rel_diff_grads"] = [_max_diff(a.cpu(), b) / max(b.abs().max().item(), 1e-30)
                                       for a, b in zip(grads, true_grads)]
        if timing:
            ms = _time_cuda(lambda fn=fn: fn(params), iters, warmup)
            ms_bwd = _time_cuda(lambda fn=fn: torch.autograd.grad(fn(params), params, dy), iters, warmup)
            entry.update(ms_fwd=ms, ms_fwd_bwd=ms_bwd, gbps_fwd=bytes_fwd / ms / 1e6)
        entry["status"] = "ok"
        report["results"][name] = entry
    if timing:
        x = true_out.to(dev, DTYPES[dtype])
        ms = _time_cuda(lambda: torch.empty_like(x).copy_(x), iters, warmup)
        report["copy"] = {"ms": ms, "gbps": 2 * x.numel() * x.element_size() / ms / 1e6}
        for entry in report["results"].values():
            if "gbps_fwd" in entry:
                entry["fraction_of_copy_bandwidth"] = entry["gbps_fwd"] / report["copy"]["gbps"]
                if "ms_fwd" in report["results"].get("torch", {}):
                    entry["speedup_vs_torch_fwd"] = report["results"]["torch"]["ms_fwd"] / entry["ms_fwd"]
    return report


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def _print(report: dict) -> None:
    c = report["config"]
    print(f"word-map kernel: B={c['batch']} M={c['classes']} d={c['dim']} {c['dtype']} on {report['device']} "
          f"(torch {report['torch']}, triton {report['triton']})")
    print(f"mode: {report['mode']}")
    print("max|diff|: against the float64 composition (F.interpolate + F.embedding + F.layer_norm)")
    for name, e in report["results"].items():
        if e.get("status") != "ok":
            print(f"  {name:14s} {e['status']}")
            continue
        line = (f"  {name:14s} max|diff| fwd {e['max_abs_diff_fwd']:.3g}  grads {max(e['max_abs_diff_grads']):.3g}"
                f" (relative {max(e['max_rel_diff_grads']):.2g})")
        if "ms_fwd" in e:
            line += (f"  fwd {e['ms_fwd'] * 1e3:.1f} us ({e['gbps_fwd']:.0f} GB/s, "
                     f"{e['fraction_of_copy_bandwidth']:.0%} of copy)  fwd+bwd {e['ms_fwd_bwd'] * 1e3:.1f} us")
        print(line)
    if "copy" in report:
        print(f"  copy           {report['copy']['ms'] * 1e3:.1f} us ({report['copy']['gbps']:.0f} GB/s)")
    print(f"bytes: {report['bytes_formula']}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ifseg_deploy.bench.kernel_wordmap", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=150)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: fp16 on a GPU, fp32 on the CPU")
    ap.add_argument("--vocab", type=int, default=59458, help="rows of the token table (OFA: 59458)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true", help="leave out torch.compile of the reference")
    ap.add_argument("--json", default=None, help="also write the report to this file")
    args = ap.parse_args(argv)
    report = run_benchmark(args.batch, args.classes, args.dim, args.iters, args.warmup, args.dtype, args.vocab,
                           args.device, args.seed, not args.no_compile)
    _print(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    # Without a GPU the Triton kernel can only run in its interpreter, which must be chosen before triton loads.
    if not torch.cuda.is_available() and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    sys.exit(main())
