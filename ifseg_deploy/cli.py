"""The ``ifseg-deploy`` command line (also ``python -m ifseg_deploy``).

Commands import their heavy dependencies (torch, onnx, ...) inside the command, so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

import json
from typing import Any

import click

from .errors import IfsegError
from .version import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
DEBUG_ENV = "IFSEG_DEPLOY_DEBUG"


class Group(click.Group):
    """The command group: a user error (an :class:`~ifseg_deploy.errors.IfsegError`, or an OSError such as a
    missing or unwritable path) is printed as ``Error: ...`` with exit status 1 (2 for usage errors), never as
    a traceback. ``--debug`` / ``IFSEG_DEPLOY_DEBUG=1`` re-raises the original exception instead, traceback and
    all, also where a command already turned it into a message."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as e:
            cause = e.__context__
            if ctx.meta.get("ifseg_debug") and isinstance(cause, Exception) and not isinstance(
                    cause, click.ClickException):
                raise cause.with_traceback(cause.__traceback__) from None
            raise
        except (IfsegError, OSError) as e:
            if ctx.meta.get("ifseg_debug"):
                raise
            usage = getattr(e, "exit_code", 1) == 2
            raise (click.UsageError if usage else click.ClickException)(user_message(e)) from None


def user_message(e: BaseException) -> str:
    """The one-line-or-more text of a user error: its message, or for an OSError from the system, what failed
    and on which path."""
    if isinstance(e, OSError) and e.strerror and e.filename is not None:
        paths = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
        return f"{paths}: {e.strerror}"
    return str(e) or type(e).__name__


def _set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta["ifseg_debug"] = bool(value)
    return value


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(
    __version__, "--version", "-V", prog_name="ifseg-deploy", message="%(prog)s %(version)s"
)
@click.option("--debug", is_flag=True, envvar=DEBUG_ENV, callback=_set_debug, expose_value=False, is_eager=True,
              help=f"Show the Python traceback of an error instead of its message (also: {DEBUG_ENV}=1).")
def cli() -> None:
    """Image-free semantic segmentation (IFSeg) on OFA, deployed to NVIDIA edge devices.

    Give a list of category names and an OFA checkpoint; get a semantic segmenter, without a single
    labelled image. The pipeline has four stages:

    \b
      adapt    category names + OFA checkpoint -> adapted model directory (PyTorch, image-free training)
      export   adapted model -> model.onnx / INT8 Q/DQ ONNX / TensorRT engine
      segment  run the segmenter on images (PyTorch, ONNX Runtime or TensorRT backend)
      bench    latency, throughput and memory; eval: mIoU on a labelled set

    Start with `inspect` (check an OFA checkpoint against your category names), then `adapt`, `export`,
    `segment` and `eval`; `info` shows the model presets and which optional parts (CUDA, ONNX Runtime,
    TensorRT...) are installed. Every command has its own --help.
    """


def categories_option(f):
    """--categories / --categories-file, shared by every command that takes category names."""
    f = click.option("--categories-file", type=click.Path(exists=True, dir_okay=False),
                     help="File with one category name per line (blank lines and # comments ignored).")(f)
    return click.option("--categories", "-c", metavar="NAMES",
                        help='Comma-separated category names, e.g. "floor, wall, cable, pallet, person".')(f)


def read_categories(categories: str | None, categories_file: str | None) -> list[str]:
    from .tokenizer import TokenizerError, parse_categories

    if (categories is None) == (categories_file is None):
        raise click.UsageError("give the category names with exactly one of --categories or --categories-file")
    try:
        if categories_file is not None:
            with open(categories_file, encoding="utf-8") as f:
                return parse_categories(f.read())
        return parse_categories(categories or "")
    except (TokenizerError, UnicodeDecodeError) as e:
        raise click.BadParameter(str(e), param_hint="categories") from None


@cli.command(short_help="Load an OFA checkpoint for your categories and report what was found.")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--bpe-dir", type=click.Path(exists=True, file_okay=False),
              help="Folder with encoder.json, vocab.bpe and dict.txt (fairseq checkpoints only; default: beside "
                   "the checkpoint or in its BPE/ subfolder).")
@click.option("--arch", type=click.Choice(["tiny", "medium", "base", "large", "huge"]),
              help="Expected model size; a checkpoint of another size is refused. Default: inferred.")
@categories_option
@click.option("--save", "save_dir", type=click.Path(file_okay=False),
              help="Also write the (not yet adapted) model as a model directory that later stages load.")
@click.option("--overwrite", is_flag=True, help="Replace --save's directory if it exists.")
def inspect(checkpoint: str, bpe_dir: str | None, arch: str | None, categories: str | None,
            categories_file: str | None, save_dir: str | None, overwrite: bool) -> None:
    """Check CHECKPOINT (an official ofa_*.pt file or a Hugging Face OFA directory) before adapting it.

    Prints the architecture inferred from the weights, how every checkpoint key was used, and the tokens of
    each category name (the class table row of a name is the mean of its tokens' embeddings). A wrong file
    (another size than --arch, the Chinese OFA, a truncated download, a pickle that would run code) is
    refused with a message, and nothing is written.
    """
    from .checkpoints.errors import CheckpointError
    from .model_dir import AdaptedModel
    from .tokenizer import PromptTooLongError

    names = read_categories(categories, categories_file)
    try:
        adapted = AdaptedModel.unadapted_from_ofa(checkpoint, names, bpe_dir=bpe_dir, arch=arch)
    except (CheckpointError, PromptTooLongError) as e:
        raise click.ClickException(str(e)) from None
    model, tok = adapted.model, adapted.tokenizer
    cfg = model.cfg
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    click.echo(adapted.metadata["load_report"])
    click.echo(f"architecture: {cfg.name} (d_model {cfg.d_model}, {cfg.heads} heads, "
               f"{cfg.encoder_layers}/{cfg.decoder_layers} layers, {cfg.resnet_type}); "
               f"{params / 1e6:.1f}M parameters, {trainable / 1e6:.1f}M trained by adaptation")
    click.echo(f"prompt: {len(model.src_tokens)} encoder tokens")
    for name, toks in zip(names, tok.name_tokens(names), strict=True):
        click.echo(f"  {name!r}: {len(toks)} token(s) {toks}")
    if save_dir:
        try:
            out = adapted.save_pretrained(save_dir, overwrite=overwrite)
        except FileExistsError as e:
            raise click.ClickException(str(e)) from None
        click.echo(f"wrote {out}")


@cli.command(short_help="Model presets and which optional parts (CUDA, ONNX Runtime, TensorRT...) work.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--no-params",
    is_flag=True,
    help="Skip counting parameters of each preset (that builds each model on the meta device).",
)
def info(as_json: bool, no_params: bool) -> None:
    """Show model presets and which optional parts (torch, CUDA, Triton, ONNX, ONNX Runtime,
    TensorRT Model Optimizer, TensorRT, pycuda) are installed and usable."""
    from .envinfo import collect

    report = collect(with_params=not no_params)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=False))
    else:
        click.echo(format_report(report))


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.1f}M"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def format_report(report: dict[str, Any]) -> str:
    """Human-readable form of :func:`ifseg_deploy.envinfo.collect`'s report."""
    py = report["python"]
    lines = [
        f"ifseg-deploy {report['ifseg_deploy']['version']}",
        f"python {py['version']} ({py['executable']}) on {py['platform']}",
        "",
        "Model presets",
    ]
    if report.get("presets_error"):
        lines.append(f"  unavailable: {report['presets_error']}")
    elif not report["presets"]:
        lines.append("  (none registered)")
    else:
        rows = [["name", "d_model", "ffn_dim", "heads", "enc", "dec", "resnet", "params"]]
        for name, p in report["presets"].items():
            layers = p.get("resnet_layers")
            resnet = p.get("resnet_type") or ""
            if layers:
                resnet = f"{resnet} ({','.join(str(x) for x in layers)})".strip()
            rows.append(
                [
                    name,
                    str(p.get("d_model")),
                    str(p.get("ffn_dim")),
                    str(p.get("heads")),
                    str(p.get("encoder_layers")),
                    str(p.get("decoder_layers")),
                    resnet,
                    _fmt_params(p.get("approx_params")),
                ]
            )
        lines += _table(rows)
        errors = {
            n: p["approx_params_error"] for n, p in report["presets"].items() if p.get("approx_params_error")
        }
        for n, msg in errors.items():
            lines.append(f"  params of {n}: {msg}")

    lines += ["", "Optional parts"]
    rows = []
    notes: list[str] = []
    for name, c in report["components"].items():
        status = c["status"]
        if status == "installed":
            shown = c.get("version") or "installed (version unknown)"
            if c.get("distribution") and c["distribution"] != name:
                shown += f" ({c['distribution']})"
        elif status == "error":
            shown = f"error: {c.get('error')}"
        else:
            shown = "not installed"
        rows.append([name, shown, c.get("purpose", "")])
        if name == "torch" and status == "installed":
            if "cuda_error" in c:
                notes.append(f"  CUDA: error: {c['cuda_error']}")
            elif c.get("cuda_available"):
                for d in c.get("devices", []):
                    cc = d["compute_capability"]
                    notes.append(f"  CUDA device {d['index']}: {d['name']} (compute capability {cc})")
            else:
                build = f"CUDA {c['cuda_build']} build" if c.get("cuda_build") else "CPU-only build"
                notes.append(f"  CUDA: not available (torch is a {build})")
        if name == "onnxruntime" and status == "installed":
            if "providers_error" in c:
                notes.append(f"  onnxruntime providers: error: {c['providers_error']}")
            else:
                notes.append("  onnxruntime providers listed: " + ", ".join(c.get("providers_listed", [])))
                if c.get("providers_usable") is not None:
                    notes.append(
                        "  onnxruntime providers usable: " + (", ".join(c["providers_usable"]) or "none")
                    )
                    for p, why in c.get("providers_unusable", {}).items():
                        notes.append(f"    {p}: not usable ({why})")
                if c.get("providers_note"):
                    notes.append(f"  onnxruntime providers usable: {c['providers_note']}")
    lines += _table(rows)
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


# Commands living in their own modules register here, after the shared helpers above exist.
from .commands.adapt import adapt as _adapt_command  # noqa: E402

cli.add_command(_adapt_command)

from .commands.demo import demo as _demo_command  # noqa: E402

cli.add_command(_demo_command)

from .commands.evaluate import evaluate_command as _eval_command  # noqa: E402
from .commands.segment import segment as _segment_command  # noqa: E402

cli.add_command(_segment_command)
cli.add_command(_eval_command)

from .commands.export import export as _export_command  # noqa: E402

cli.add_command(_export_command)

from .commands.bench import bench as _bench_command  # noqa: E402

cli.add_command(_bench_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="ifseg-deploy")


if __name__ == "__main__":
    main()
