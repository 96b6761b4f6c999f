"""`ifseg-deploy demo`: the whole pipeline on the embedded synthetic world."""

from __future__ import annotations

import click


@click.command(short_help="Run the whole pipeline on the built-in synthetic world (no downloads, minutes on a CPU).")
@click.option("--out", default="ifseg-demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the model, the ONNX files, the pictures and report.md.")
@click.option("--quick", is_flag=True, help="Reduced mode (smaller world-model build, fewer steps and scenes).")
@click.option("--open-vocabulary", is_flag=True,
              help="Adapt ONE model on 12 names of the 16-concept world and show it segmenting two vocabularies "
                   "(one with names never seen in adaptation) in PyTorch and in an --open-vocabulary ONNX file.")
@click.option("--steps", type=int,
              help="Adaptation steps (default 300; 200 with --quick; --open-vocabulary: 400, 200 with --quick).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where the world model is cached (default: ~/.cache/ifseg-deploy or $IFSEG_DEPLOY_CACHE).")
@click.option("--overwrite", is_flag=True, help="Replace the contents of --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out: str, quick: bool, open_vocabulary: bool, steps: int | None, cache_dir: str | None, overwrite: bool,
         quiet: bool) -> None:
    """Show image-free segmentation working end to end, before you fetch a real OFA checkpoint.

    Builds (once, then cached) a tiny vision-language model of OFA's architecture for a procedural world of
    eight concepts (sky, grass, water, sand, brick, snow, road, forest), adapts it to those names through the
    real `adapt` code path without seeing an image, exports it to ONNX and calibrated INT8, segments scenes it
    never saw, and writes overlays and report.md with the mIoU of the unadapted model and of the adapted model
    in PyTorch, ONNX Runtime and INT8.

    With --open-vocabulary: the 16-concept world; one model adapted with a vocabulary of 12 names (4 held out),
    exported with `export --open-vocabulary`, then switched at run time (`set_categories`) between two lists
    of names; report.md has the mIoU and the overlays of each.
    """
    import dataclasses

    if steps is not None and steps < 1:
        raise click.BadParameter("must be >= 1", param_hint="--steps")
    kw = dict(cache_dir=cache_dir, overwrite=overwrite, progress=not quiet, echo=click.echo)
    if open_vocabulary:
        from ..demo_open import OpenDemoSettings, run_open_vocabulary_demo

        open_settings = OpenDemoSettings.quick() if quick else OpenDemoSettings()
        if steps is not None:
            open_settings = dataclasses.replace(open_settings, steps=steps)
        run_open_vocabulary_demo(out, open_settings, **kw)
        return
    from ..demo import DemoSettings, run_demo

    settings = DemoSettings.quick() if quick else DemoSettings()
    if steps is not None:
        settings = dataclasses.replace(settings, steps=steps)
    run_demo(out, settings, **kw)
