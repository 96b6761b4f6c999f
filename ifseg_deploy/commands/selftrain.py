"""`ifseg-deploy selftrain`: fine-tune an adapted model on its own pseudo-labels of your unlabeled images."""

from __future__ import annotations

import click

from ..runtime.registry import BACKEND_NAMES
from .options import device_option


@click.command(short_help="Self-train an adapted model on your unlabeled images (plus a few labelled ones).")
@click.option("--model", required=True, type=click.Path(exists=True, file_okay=False),
              help="The adapted-model directory to start from (`ifseg-deploy adapt` output).")
@click.option("--images", required=True, type=click.Path(exists=True),
              help="A folder of unlabeled images, or a video file (see --every).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The new model directory to write.")
@click.option("--masks", type=click.Path(exists=True, file_okay=False),
              help="Labelled images in the `folder` layout (images/, masks/ with class ids, 255 = ignore, "
                   "classes.txt) mixed in; their labels replace pseudo-labels.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Video input: use every N-th frame.")
@click.option("--rounds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Label, train; each further round relabels with the improved model.")
@click.option("--min-confidence", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Pixels whose refined class probability is lower are ignored.")
@click.option("--balance/--no-balance", default=True, show_default=True,
              help="Per-class thresholds: each class keeps at least the fraction of its pixels that "
                   "--min-confidence keeps overall (without it the confident classes crowd out the others).")
@click.option("--min-images", type=click.IntRange(min=1), default=8, show_default=True,
              help="Refuse to run with fewer readable unlabeled images.")
@click.option("--backend", type=click.Choice(BACKEND_NAMES), default="torch", show_default=True,
              help="Engine that labels the first round (onnxruntime/tensorrt: with --label-model).")
@click.option("--label-model", type=click.Path(exists=True),
              help="The exported file of --model that --backend onnxruntime/tensorrt labels with.")
@click.option("--label-short-side", type=click.IntRange(min=1), default=None,
              help="Short side of the labelling inference [default: the model's, 512].")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Optimizer steps per round.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Global batch (split over processes).")
@click.option("--crop-size", type=click.IntRange(min=16), default=512, show_default=True,
              help="Training crops (after a random resize of the short side to 0.5..2 x this).")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Peak learning rate (cosine to 0).")
@click.option("--weight-decay", type=float, default=0.1, show_default=True, help="Decoupled weight decay.")
@click.option("--clip-norm", type=float, default=1.0, show_default=True, help="Gradient-norm clip (0: off).")
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--drop-path", type=float, default=0.1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU, fp32 on a CPU.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=200, show_default=True,
              help="Save the run state every N steps (and at the end of each round).")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@device_option(None, "Training device: cpu, cuda, cuda:1 ... (default: this process's GPU if any, else cpu).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that wrote OUT.partial/.")
@click.option("--overwrite", is_flag=True, help="Replace OUT (and discard an interrupted run) when it exists.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def selftrain(model, images, out, masks, every, rounds, min_confidence, balance, min_images, backend, label_model,
              label_short_side, steps, batch_size, crop_size, lr, weight_decay, clip_norm, dropout, drop_path, seed,
              precision, checkpoint_every, log_every, device, resume, overwrite, quiet) -> None:
    """Self-train an adapted model on your own unlabeled images (IFSeg's self-training step).

    The model labels every image with the paper's inference (whole image, short side 512, kNN refinement);
    pixels below --min-confidence are ignored; then it is fine-tuned on the (image, pseudo-label) pairs with
    random resize/crop/flip, the frozen parts and loss of adaptation. --masks mixes labelled images in. The run
    state lives in OUT.partial/; Ctrl-C saves, --resume continues; OUT appears, complete, at the end.

    \b
    Example:
      ifseg-deploy selftrain --model my_model --images frames/ --out my_model_st --rounds 2
    """
    from ..adapt.config import AdaptConfig
    from ..adapt.loop import TrainingInterrupted
    from ..checkpoints.errors import CheckpointError
    from ..selftraining.run import SelfTrainConfig
    from ..selftraining.run import selftrain as run_selftrain

    train = AdaptConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip_norm=clip_norm,
                        dropout=dropout, drop_path=drop_path, target_size=crop_size, seed=seed, precision=precision,
                        checkpoint_every=checkpoint_every, log_every=log_every)
    cfg = SelfTrainConfig(train=train, rounds=rounds, min_confidence=min_confidence, balance=balance,
                          min_images=min_images, every=every, label_short_side=label_short_side)
    try:
        result = run_selftrain(model, images, out, cfg, masks=masks, backend=backend, label_model=label_model,
                               device=device, resume=resume, overwrite=overwrite, progress=not quiet,
                               echo=lambda m: click.echo(m, err=True))
    except TrainingInterrupted as e:
        click.echo(f"\n{e}", err=True)
        raise SystemExit(130) from None
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if result.out_dir is not None:
        cover = ", ".join(f"{s['coverage']:.0%}" for s in result.rounds)
        click.echo(f"wrote {result.out_dir} ({result.steps_done} steps, {len(result.rounds)} round(s), "
                   f"pseudo-label coverage {cover}, {len(result.skipped)} unreadable file(s) skipped)")
