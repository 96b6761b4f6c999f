"""The ``ifseg-deploy`` command line (also ``python -m ifseg_deploy``): the click group, its error handling, and
the commands of :mod:`ifseg_deploy.commands` (one module each) added to it.

Commands import their heavy dependencies (torch, onnx, ...) inside the command, so ``--help`` and
``--version`` stay fast.
"""

from __future__ import annotations

from typing import Any

import click

from .commands.adapt import adapt
from .commands.bench import bench
from .commands.demo import demo
from .commands.evaluate import evaluate_command
from .commands.export import export
from .commands.info import info
from .commands.inspect import inspect
from .commands.segment import segment
from .commands.selftrain import selftrain
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
      selftrain  optional: adapted model + your unlabeled images (+ a few masks) -> a self-trained model
      export   adapted model -> model.onnx / INT8 Q/DQ ONNX / TensorRT engine
      segment  run the segmenter on images (PyTorch, ONNX Runtime or TensorRT backend)
      bench    latency, throughput and memory; eval: mIoU on a labelled set

    Start with `inspect` (check an OFA checkpoint against your category names), then `adapt`, `export`,
    `segment` and `eval`; `info` shows the model presets and which optional parts (CUDA, ONNX Runtime,
    TensorRT...) are installed. Every command has its own --help.
    """


for _command in (inspect, info, adapt, selftrain, demo, segment, evaluate_command, export, bench):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="ifseg-deploy")


if __name__ == "__main__":
    main()
