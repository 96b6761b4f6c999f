"""``ifseg-deploy inspect``: load an OFA checkpoint for a list of category names and report what was found."""

from __future__ import annotations

import click

from .options import arch_option, categories_option, read_categories


@click.command(short_help="Load an OFA checkpoint for your categories and report what was found.")
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--bpe-dir", type=click.Path(exists=True, file_okay=False),
              help="Folder with encoder.json, vocab.bpe and dict.txt (fairseq checkpoints only; default: beside "
                   "the checkpoint or in its BPE/ subfolder).")
@arch_option("Expected model size; a checkpoint of another size is refused. Default: inferred.")
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
    from ..model_dir import AdaptedModel

    names = read_categories(categories, categories_file)
    # A wrong checkpoint (CheckpointError), a too-long prompt and an existing --save folder are user errors:
    # the command group prints them.
    adapted = AdaptedModel.unadapted_from_ofa(checkpoint, names, bpe_dir=bpe_dir, arch=arch)
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
        click.echo(f"wrote {adapted.save_pretrained(save_dir, overwrite=overwrite)}")
