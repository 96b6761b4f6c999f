"""Options and argument parsing shared by several commands: category names, the Segmenter's backend options,
HxW sizes and ``--device``.

Nothing heavy is imported here (torch, onnx, ...): every command module imports this one, and ``ifseg-deploy
--help`` imports every command module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..devices import DEVICE_HELP
from ..runtime.registry import BACKEND_NAMES, TORCH_PRECISIONS

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

#: The OFA sizes ``--arch`` accepts (the presets a checkpoint is matched against).
ARCH_NAMES = ("tiny", "medium", "base", "large", "huge")


def categories_option(f: Callable[..., Any], at_run_time: bool = False) -> Callable[..., Any]:
    """--categories / --categories-file, shared by every command that takes category names."""
    extra = (" Default: the model's own. A subset of them works with any model; other names need a model adapted "
             "with --vocabulary." if at_run_time else "")
    f = click.option("--categories-file", type=click.Path(exists=True, dir_okay=False),
                     help="File with one category name per line (blank lines and # comments ignored)." + extra)(f)
    return click.option("--categories", "-c", metavar="NAMES",
                        help='Comma-separated category names, e.g. "floor, wall, cable, pallet, person".' + extra)(f)


def run_time_categories_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """--categories / --categories-file of the commands that run a model (segment, eval): optional, they choose
    what the loaded model segments."""
    return categories_option(f, at_run_time=True)


def read_categories(categories: str | None, categories_file: str | None, required: bool = True) -> list[str] | None:
    """The names given with exactly one of --categories / --categories-file (None when neither is given and
    ``required`` is False); a bad list is a usage error."""
    from ..tokenizer import TokenizerError, parse_categories

    if not required and categories is None and categories_file is None:
        return None
    if (categories is None) == (categories_file is None):
        raise click.UsageError("give the category names with exactly one of --categories or --categories-file")
    try:
        if categories_file is not None:
            with open(categories_file, encoding="utf-8") as f:
                return parse_categories(f.read())
        return parse_categories(categories or "")
    except (TokenizerError, UnicodeDecodeError) as e:
        raise click.BadParameter(str(e), param_hint="categories") from None


def arch_option(help: str) -> Decorator:
    """--arch: the expected model size."""
    return click.option("--arch", type=click.Choice(ARCH_NAMES), help=help)


def device_option(default: str | None, help: str = DEVICE_HELP + ".") -> Decorator:
    """--device. The string is read by :mod:`ifseg_deploy.devices` where it is used (each engine refuses a
    device it cannot run on with its own message), so every command accepts the same spellings."""
    return click.option("--device", default=default, show_default=default is not None, help=help)


def backend_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--backend/--device/--no-refine/--refine-k/--refine-iters/--short-side/--max-long-side of the commands
    that run a Segmenter (segment, eval); :func:`load_segmenter` takes their values."""
    opts = [
        click.option("--backend", type=click.Choice(BACKEND_NAMES), default="torch", show_default=True,
                     help="Engine: torch (an adapted-model directory), onnxruntime or tensorrt (an exported "
                          "file)."),
        device_option("cpu"),
        click.option("--no-refine", is_flag=True,
                     help="Skip the kNN refinement of the probabilities (raw model output)."),
        click.option("--refine-k", type=click.IntRange(min=1), default=None,
                     help="Neighbours of the refinement, the cell itself included [default: 3]."),
        click.option("--refine-iters", type=click.IntRange(min=0), default=None,
                     help="Refinement iterations [default: 25]."),
        click.option("--short-side", type=click.IntRange(min=1), default=None,
                     help="Resize the short side to this [default: the model's, 512]."),
        click.option("--max-long-side", type=click.IntRange(min=1), default=None,
                     help="Cap on the long side after resizing [default: the model's, 2048]."),
        click.option("--precision", type=click.Choice(TORCH_PRECISIONS), default="fp32", show_default=True,
                     help="torch backend: fp32 is exact; bf16 (CPUs with AVX-512 BF16/AMX, GPUs) and fp16 (GPUs) "
                          "autocast the transformer, keeping LayerNorm, softmax, the ResNet and the refinement in "
                          "fp32. An exported file has its precision built in."),
        click.option("--compile", "compile_model", is_flag=True,
                     help="torch backend: torch.compile the model (the first images take longer)."),
        click.option("--low-memory", is_flag=True,
                     help="onnxruntime backend: no memory arena, so each run's activations are handed back "
                          "between runs (OFA-Base at 512x512: ~0.6 GiB; the peak during a run is unchanged; "
                          "int8-dynamic files run ~7% slower)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def load_segmenter(model: str, backend: str, device: str, no_refine: bool, refine_k: int | None,
                   refine_iters: int | None, short_side: int | None, max_long_side: int | None,
                   categories: list[str] | None = None, precision: str = "fp32",
                   compile_model: bool = False, low_memory: bool = False) -> Any:
    """The Segmenter of :func:`backend_options`' values, segmenting ``categories`` (None: the model's own). A user
    error (an :class:`~ifseg_deploy.errors.IfsegError` or an OSError) propagates: the command group prints it as
    ``Error: ...``."""
    from ..runtime.segmenter import Segmenter

    backend_kwargs: dict[str, Any] = {}
    if precision != "fp32" or compile_model:
        if backend != "torch":
            raise click.UsageError("--precision and --compile choose how the torch backend computes; an exported "
                                   "file has its precision built in (export --precision ...)")
        backend_kwargs = {"precision": precision, "compile": compile_model}
    if low_memory:
        if backend != "onnxruntime":
            raise click.UsageError("--low-memory sets ONNX Runtime's session memory; it goes with --backend "
                                   "onnxruntime")
        from ..runtime.backends.ort_session import OrtSessionSettings

        backend_kwargs = {"settings": OrtSessionSettings.low_memory()}
    if backend == "tensorrt" and str(model).lower().endswith(".onnx"):
        # The runtime loads engines and never builds one; on the command line an .onnx is still accepted: its
        # engine comes from the engine cache, built first if needed (minutes), as `export --format tensorrt` does.
        from ..export.trt_build import engine_for

        model = str(engine_for(model, device=device, echo=click.echo))
    return Segmenter.from_pretrained(model, backend=backend, device=device, refine=False if no_refine else None,
                                     refine_k=refine_k, refine_iters=refine_iters, short_side=short_side,
                                     max_long_side=max_long_side, categories=categories, **backend_kwargs)


def parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """Click callback: ``HxW`` (or one number for a square) -> (height, width)."""
    if value is None:
        return None
    from ..runtime.input_spec import SpecError
    from ..runtime.input_spec import parse_size as parse

    try:
        return parse(value)
    except SpecError as e:
        raise click.BadParameter(str(e)) from None


def parse_sizes(ctx: click.Context, param: click.Parameter, value: str | None) -> list[tuple[int, int]] | None:
    """Click callback: comma-separated ``HxW`` sizes -> their list, each once, in the order given."""
    if value is None:
        return None
    sizes: list[tuple[int, int]] = []
    for part in value.split(","):
        size = parse_size(ctx, param, part) if part.strip() else None
        if size is not None and size not in sizes:
            sizes.append(size)
    if not sizes:
        raise click.BadParameter("no size given")
    return sizes
