"""``ifseg-deploy bench``: latency, throughput, memory and accuracy of every backend beside the PyTorch baseline;
``--mode adapt`` / ``--mode kernel`` for the adaptation step and the word-map kernel."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence

import click

from ..bench.settings import (
    BENCH_PRECISIONS,
    BenchUsageError,
    InferenceSettings,
    bench_device,
    parse_ints,
    parse_list,
)
from ..runtime.registry import BACKEND_NAMES
from .options import ARCH_NAMES, categories_option, device_option, parse_sizes, read_categories

MODES = ["inference", "adapt", "kernel"]


def _list(allowed: Sequence[str], what: str):
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return parse_list(value, allowed, what)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return parse_ints(value, "batch size")
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command(short_help="Latency, throughput, memory and mIoU of each backend and precision, beside PyTorch fp32.")
@click.option("--mode", type=click.Choice(MODES), default="inference", show_default=True,
              help="inference: the segmenter's backends; adapt: adaptation samples/s and data share; kernel: the "
                   "fused word-map kernel against its references.")
@click.option("--model", "models", multiple=True, type=click.Path(exists=True),
              help="Adapted-model directory (the PyTorch baseline), and any .onnx / .engine exported from it; "
                   "repeat the option. An `ifseg-deploy demo` output folder brings model/, model.onnx and "
                   "model.int8.onnx at once.")
@click.option("--preset", type=click.Choice(ARCH_NAMES),
              help="Instead of --model: a random-weight model of this preset, written to OUT/model; its ONNX / INT8 "
                   "files are exported into OUT/exports. With --mode adapt: the preset to train. [adapt default: "
                   "tiny]")
@click.option("--bpe-dir", type=click.Path(exists=True, file_okay=False),
              help="--preset: OFA's BPE files (encoder.json, vocab.bpe, dict.txt) for a real prompt length; "
                   "default categories are then ADE20K's 150. Without it: the synthetic world's vocabulary and "
                   "its 8 names.")
@categories_option
@click.option("--seed", type=int, default=0, show_default=True, help="--preset: seed of the random weights.")
@click.option("--backends", callback=_list(BACKEND_NAMES, "backend"), default="torch,onnxruntime,tensorrt",
              show_default=True, help="Comma-separated backends; PyTorch eager fp32 is always measured (baseline).")
@click.option("--precisions", callback=_list(BENCH_PRECISIONS, "precision"), default="fp32,fp16,int8",
              show_default=True, help="Comma-separated precisions; combinations that cannot run here are "
                                      "reported as skipped, with the reason. int8 = the Q/DQ export (made for "
                                      "TensorRT); int8-dynamic = onnxruntime's own dynamic INT8 of the MatMul/Gemm "
                                      "weights, the CPU INT8 format.")
@click.option("--sizes", callback=parse_sizes, metavar="HxW[,HxW...]",
              help="Model input sizes. [default: the given .onnx files' fixed sizes, else the model's short side "
                   "squared (512x512 for OFA presets)]")
@click.option("--batch", "batches", callback=_ints, default="1", show_default=True, metavar="N[,N...]",
              help="Batch sizes (inference); the first one for --mode adapt / kernel [default there: 4].")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True,
              help="Untimed rounds first. [adapt: 2 steps; kernel: 10 calls]")
@click.option("--iters", type=click.IntRange(min=1), default=20, show_default=True,
              help="Timed rounds (inference: each variant runs once per round, interleaved). [adapt: 10 steps; "
                   "kernel: 100 calls per timing]")
@click.option("--calib-images", type=click.Path(exists=True, file_okay=False),
              help="INT8 calibration photos for the exports the benchmark makes. [default: synthetic-world "
                   "scenes]")
@click.option("--calib-max", type=click.IntRange(min=1), default=8, show_default=True,
              help="Calibration images used (few keeps a base-size INT8 export to minutes on a CPU).")
@click.option("--threads", type=click.IntRange(min=1),
              help="Threads for torch and for onnxruntime's intra-op pool (the same number for both). [default: "
                   "torch's default, the number of cores]")
@device_option("auto", "cpu, cuda, cuda:N or auto.")
@click.option("--dataset", "dataset_name", metavar="NAME",
              help="Also measure mIoU per backend and precision: synthetic, or folder / ade20k / coco-stuff-* "
                   "with --root.")
@click.option("--root", type=click.Path(exists=True, file_okay=False), help="Folder of --dataset.")
@click.option("--limit", type=click.IntRange(min=1), default=16, show_default=True,
              help="--dataset: images used (synthetic: scenes generated).")
@click.option("--no-refine", is_flag=True, help="Leave the kNN refinement out (torch and the exports).")
@click.option("--classes", type=click.IntRange(min=1), default=150, show_default=True,
              help="--mode adapt / kernel: number of categories.")
@click.option("--no-plot", is_flag=True, help="Do not write bench.png.")
@click.option("--profile", "profile", is_flag=True,
              help="After timing, profile one model-only call per variant (torch.profiler; onnxruntime's "
                   "profiler) and write profile.md: which operators dominate.")
@click.option("--compile", "compile_model", is_flag=True,
              help="Also run every torch row through torch.compile (the gain or loss is its ratio to the eager "
                   "row).")
@click.option("--peak", is_flag=True,
              help="Measure this machine's GEMM peak (fp32, bf16, int8; fp16 on a GPU) on the same threads and "
                   "device first: every row then shows its share of the peak of its data type.")
@click.option("--ort-low-memory", is_flag=True,
              help="ONNX Runtime rows without the memory arena (as segment --low-memory): less resident memory, "
                   "some time.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for bench.json / bench.md / bench.png (adapt.*, kernel.* in the other modes), and for "
                   "the model files the benchmark makes.")
def bench(mode: str, models: tuple[str, ...], preset: str | None, bpe_dir: str | None, categories: str | None,
          categories_file: str | None, seed: int, backends: list[str], precisions: list[str],
          sizes: list[tuple[int, int]] | None, batches: list[int], warmup: int, iters: int, calib_images: str | None,
          calib_max: int, threads: int | None, device: str, dataset_name: str | None, root: str | None, limit: int,
          no_refine: bool, classes: int, no_plot: bool, profile: bool, compile_model: bool, peak: bool,
          ort_low_memory: bool, out: str) -> None:
    """Measure what a deployment will see, with PyTorch eager fp32 of the same model measured in the same run.

    \b
      ifseg-deploy bench --preset base --bpe-dir OFA/utils/BPE --backends torch,onnxruntime \\
          --precisions fp32,int8 --sizes 512x512 --out bench-base
      ifseg-deploy bench --model ifseg-demo --dataset synthetic --out bench-demo
      ifseg-deploy bench --model my_model --model my_model.onnx --model my_model.engine --device cuda --out b
      ifseg-deploy bench --mode adapt --preset base --batch 4 --out b
      ifseg-deploy bench --mode kernel --out b

    Per backend, precision, size and batch: warm-up, then timed rounds; mean / p50 / p90 / p99 latency and
    throughput, model-only (the backend on preprocessed pixels) and end-to-end (uint8 image in, labels at the
    image size out), peak host memory (and device memory on a GPU), label agreement with the baseline and,
    with --dataset, mIoU. Every figure is also a ratio to the baseline. Writes bench.json, bench.md and
    bench.png into --out.
    """
    command = "ifseg-deploy " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv else None
    bench_device(device)  # a bad --device is a usage error in every mode (the CLI prints it, no traceback)
    if mode != "inference":
        if mode == "adapt" and models:
            raise click.UsageError("--mode adapt measures a random-weight model: give --preset, not --model")
        _other_mode(mode, preset, classes, batches, warmup, iters, device, threads, out, command)
        return
    if bpe_dir and not preset:
        raise click.UsageError("--bpe-dir goes with --preset (the tokenizer of the random-weight model)")
    names = None
    if categories is not None or categories_file is not None:
        if not preset:
            raise click.UsageError("--categories goes with --preset (a --model has its own categories)")
        names = read_categories(categories, categories_file)
    if root and not dataset_name:
        raise click.UsageError("--root goes with --dataset")
    settings = InferenceSettings(
        out=out, models=list(models), preset=preset, categories=names, bpe_dir=bpe_dir, seed=seed,
        backends=backends, precisions=precisions, sizes=sizes, batches=batches, warmup=warmup, iters=iters,
        calib_images=calib_images, calib_max=calib_max, threads=threads, device=device, dataset=dataset_name,
        root=root, limit=limit, refine=not no_refine, plot=not no_plot, profile=profile, compile=compile_model,
        peak=peak, ort_low_memory=ort_low_memory, command=command)
    _inference(settings, out, no_plot)


def _other_mode(mode: str, preset: str | None, classes: int, batches: list[int], warmup: int, iters: int,
                device: str, threads: int | None, out: str, command: str | None) -> None:
    """--mode adapt / kernel, with those modules' own defaults for what was not given."""
    from ..bench.modes import run_adapt, run_kernel, write_mode_outputs

    ctx = click.get_current_context()
    if ctx.get_parameter_source("warmup") == click.core.ParameterSource.DEFAULT:
        warmup = 2 if mode == "adapt" else 10
    if ctx.get_parameter_source("iters") == click.core.ParameterSource.DEFAULT:
        iters = 10 if mode == "adapt" else 100
    if ctx.get_parameter_source("batches") == click.core.ParameterSource.DEFAULT:
        batches = [4]
    if mode == "adapt":
        report = run_adapt(preset or "tiny", classes, batches[0], iters, warmup, device, threads, command)
        files = write_mode_outputs(report, out)
        r = report["result"]
        click.echo(f"{r['preset']} on {r['device_name']}: {r['samples_per_s']:.2f} samples/s, step "
                   f"{r['step_ms']:.1f} ms, data share {100 * r['data_share']:.1f}%")
    else:
        report = run_kernel(batches[0], classes, iters, warmup, device, threads, command)
        files = write_mode_outputs(report, out)
        for name, e in report["result"]["results"].items():
            extra = f", fwd {e['ms_fwd'] * 1e3:.1f} us" if "ms_fwd" in e else ""
            click.echo(f"  {name:14s} {e.get('status')}{extra}")
    click.echo("wrote " + ", ".join(files.values()))


def _inference(settings: InferenceSettings, out: str, no_plot: bool) -> None:
    from ..bench.report import summary_lines, write_outputs
    from ..bench.run import run_inference
    from ..checkpoints.errors import CheckpointError
    from ..tokenizer import TokenizerError

    try:
        report = run_inference(settings, echo=click.echo)
    except BenchUsageError as e:
        raise click.UsageError(str(e)) from None
    except (CheckpointError, TokenizerError, FileNotFoundError, KeyError) as e:
        raise click.ClickException(str(e)) from None
    files = write_outputs(report, out, plot=not no_plot)
    for line in summary_lines(report):
        click.echo(line)
    if not no_plot and "png" not in files:
        click.echo(report["notes"][-1])
    click.echo("wrote " + ", ".join(files.values()))
