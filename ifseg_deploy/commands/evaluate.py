"""``ifseg-deploy eval``: mIoU / mAcc / aAcc of a model on a labelled set, by the paper's protocol."""

from __future__ import annotations

import json

import click

from ..evaluation.registry import DATASETS
from .options import backend_options, load_segmenter, read_categories, run_time_categories_option


@click.command("eval", short_help="mIoU, mAcc and aAcc on ADE20K, COCO-Stuff or a folder of labelled images.")
@click.option("--model", "-m", required=True, type=click.Path(exists=True),
              help="Adapted-model directory (torch backend) or exported model file.")
@click.option("--dataset", "-d", "dataset_name", required=True, metavar="NAME",
              help=f"One of: {', '.join(DATASETS)}.")
@click.option("--root", type=click.Path(exists=True, file_okay=False),
              help="The dataset folder (ADEChallengeData2016 or its parent; the COCO-Stuff folder with "
                   "images/val2017 and annotations/val2017; a folder with images/, masks/, classes.txt).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N images (sorted by name).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="Also write the report as JSON (metrics as fractions in [0, 1]; null where undefined).")
@backend_options
@run_time_categories_option
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def evaluate_command(model: str, dataset_name: str, root: str | None, limit: int | None, out_file: str | None,
                     backend: str, device: str, no_refine: bool, refine_k: int | None, refine_iters: int | None,
                     short_side: int | None, max_long_side: int | None, precision: str,
                     compile_model: bool, low_memory: bool, categories: str | None, categories_file: str | None,
                     no_progress: bool) -> None:
    """Evaluate the model at --model on a labelled dataset, the way IFSeg's paper does.

    Single scale, whole image: each image is resized (short side 512, long side at most 2048), segmented, and
    the prediction is upsampled to the image's original size; intersections and unions are summed over the
    whole set; mIoU averages the classes present in labels or predictions. Ignored pixels (255; ADE20K's
    "other"; COCO's unlabeled and, for coco-stuff-15, every class but the 15 unseen ones) do not count.

    The model must have been adapted to the dataset's class names (any order). Prints the per-class table and
    the summary; --out writes the same as JSON.
    """
    from ..atomic import atomic_write_text
    from ..evaluation.evaluate import evaluate, format_table
    from ..evaluation.registry import get_dataset

    if dataset_name not in DATASETS:
        raise click.BadParameter(f"unknown dataset {dataset_name!r}; choose one of {', '.join(DATASETS)}",
                                 param_hint="--dataset")
    # A dataset that cannot be read, a model of other classes and an unreadable image are user errors (the
    # command group prints them).
    names = read_categories(categories, categories_file, required=False)
    dataset = get_dataset(dataset_name, root)
    with load_segmenter(model, backend, device, no_refine, refine_k, refine_iters, short_side, max_long_side,
                        names, precision, compile_model, low_memory) as seg:
        report = evaluate(seg, dataset, limit=limit, progress=not no_progress, model_path=model)
    click.echo(format_table(report))
    if out_file:
        atomic_write_text(out_file, json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {out_file}")
