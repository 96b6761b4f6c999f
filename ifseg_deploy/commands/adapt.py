"""`ifseg-deploy adapt`: image-free adaptation of an OFA checkpoint to a list of category names."""

from __future__ import annotations

import click

from .options import arch_option, categories_option, device_option, read_categories


@click.command(short_help="Adapt an OFA checkpoint to your category names (no images needed).")
@click.option("--checkpoint", required=True, type=click.Path(exists=True),
              help="ofa_*.pt (with its BPE files), a Hugging Face OFA directory, or a model directory.")
@click.option("--bpe-dir", type=click.Path(exists=True, file_okay=False),
              help="encoder.json, vocab.bpe, dict.txt for a fairseq checkpoint (default: beside it).")
@categories_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The adapted-model directory to write.")
@arch_option("Expected model size (refuses a checkpoint of another size).")
@click.option("--steps", type=int, default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Global batch (split over processes).")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="Peak learning rate (cosine to 0).")
@click.option("--weight-decay", type=float, default=0.1, show_default=True, help="Decoupled weight decay.")
@click.option("--clip-norm", type=float, default=1.0, show_default=True, help="Global gradient-norm clip (0: off).")
@click.option("--dropout", type=float, default=0.1, show_default=True)
@click.option("--drop-path", type=float, default=0.1, show_default=True)
@click.option("--grid-max", type=int, default=32, show_default=True,
              help="Word-map grids are U x V with U, V uniform in 1..grid-max.")
@click.option("--wordmap-size", type=int, default=32, show_default=True,
              help="Cells per side of the word map the encoder sees (32 = the 512 px / 16 of pre-training).")
@click.option("--target-size", type=int, default=512, show_default=True,
              help="Pixels per side of the loss targets (logits are upsampled to it).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 autocast on a GPU (fp16 with loss scaling where bf16 is missing), fp32 on a CPU.")
@click.option("--kernel", type=click.Choice(["auto", "triton", "torch"]), default="auto", show_default=True,
              help="Word-map embedding implementation (auto: the fused Triton kernel on CUDA).")
@click.option("--loss", "loss_impl", type=click.Choice(["chunked", "reference"]), default="chunked",
              show_default=True, help="chunked never holds more than one full-resolution copy of the logits.")
@click.option("--checkpoint-every", type=int, default=200, show_default=True, help="Save the run state every N steps.")
@click.option("--log-every", type=int, default=10, show_default=True, help="Log metrics every N steps.")
@device_option(None, "cpu, cuda, cuda:1 ... (default: the GPU of this process if any, else cpu).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run that wrote OUT.partial/.")
@click.option("--overwrite", is_flag=True, help="Replace OUT (and discard an interrupted run) when it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def adapt(checkpoint, bpe_dir, categories, categories_file, out, arch, steps, batch_size, lr, weight_decay, clip_norm,
          dropout, drop_path, grid_max, wordmap_size, target_size, seed, precision, kernel, loss_impl,
          checkpoint_every, log_every, device, resume, overwrite, quiet) -> None:
    """Adapt an OFA checkpoint to your categories from their names alone (IFSeg's image-free method).

    Each step draws random U x V grids of your categories, turns them into "word maps" of the names' embeddings
    in place of images, and trains the model to label every cell; the defaults are the paper's recipe (2000
    steps, batch 16, AdamW lr 5e-5 cosine). The run state lives in OUT.partial/ (checkpoints every
    --checkpoint-every steps, metrics.jsonl); OUT appears, complete, only at the end. Ctrl-C saves and exits;
    run the same command with --resume to continue. Several GPUs:
    `torchrun --nproc-per-node K -m ifseg_deploy adapt ...` keeps the global batch.

    \b
    Example:
      ifseg-deploy adapt --checkpoint ofa_base.pt --bpe-dir OFA/utils/BPE \\
          -c "floor, wall, cable, pallet, person" --out my_model
    """
    from ..adapt import AdaptationInterrupted, AdaptConfig
    from ..adapt import adapt as run_adapt
    from ..checkpoints.errors import CheckpointError

    names = read_categories(categories, categories_file)
    cfg = AdaptConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip_norm=clip_norm,
                      dropout=dropout, drop_path=drop_path, grid_max=grid_max, wordmap_size=wordmap_size,
                      target_size=target_size, seed=seed,
                      precision=precision, kernel=kernel, loss=loss_impl, checkpoint_every=checkpoint_every,
                      log_every=log_every)
    try:
        result = run_adapt(checkpoint, names, out, cfg, bpe_dir=bpe_dir, arch=arch, device=device, resume=resume,
                           overwrite=overwrite, progress=not quiet)
    except AdaptationInterrupted as e:
        click.echo(f"\n{e}", err=True)
        raise SystemExit(130) from None
    except (CheckpointError, FileExistsError, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if result.out_dir is not None:
        click.echo(f"wrote {result.out_dir} ({result.steps_done} steps, last loss {result.last_loss:.4f})")
