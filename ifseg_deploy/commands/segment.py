"""``ifseg-deploy segment``: label PNGs and colour overlays for images and folders of images."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .options import backend_options, load_segmenter


def _output_stems(items: list[tuple[Path, Path | None]]) -> list[Path]:
    """Relative output paths without suffix: under a folder input, its relative path; two inputs that would
    share a name get their suffix appended (photo_jpg, photo_png), then a counter."""
    stems = []
    for path, root in items:
        rel = path.relative_to(root) if root is not None else Path(path.name)
        stems.append(rel.with_suffix(""))
    seen: dict[Path, int] = {}
    for s in stems:
        seen[s] = seen.get(s, 0) + 1
    out, used = [], set()
    for (path, _), s in zip(items, stems):
        if seen[s] > 1:
            s = s.with_name(f"{s.name}_{path.suffix.lstrip('.').lower() or 'noext'}")
        base, n = s, 2
        while s in used:
            s = base.with_name(f"{base.name}_{n}")
            n += 1
        used.add(s)
        out.append(s)
    return out


@click.command(short_help="Segment images: label PNGs (class ids) and colour overlays with a legend.")
@click.argument("inputs", nargs=-1, required=True, metavar="IMAGE|DIR...")
@click.option("--model", "-m", required=True, type=click.Path(exists=True),
              help="Adapted-model directory (torch backend) or exported model file.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (created).")
@backend_options
@click.option("--save-probs", is_flag=True,
              help="Also write the class probabilities on the model's 1/16 grid as probs/NAME.npy, (M, h, w) "
                   "float32.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the class colours in the overlay.")
@click.option("--recursive", "-r", is_flag=True, help="Also look for images in sub-folders of DIR inputs.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def segment(inputs: tuple[str, ...], model: str, out_dir: str, backend: str, device: str, no_refine: bool,
            refine_k: int | None, refine_iters: int | None, short_side: int | None, max_long_side: int | None,
            save_probs: bool, alpha: float, recursive: bool, no_progress: bool) -> None:
    """Segment every IMAGE (and every image file in each DIR) with the model at --model.

    \b
    Writes, per image NAME, under --out:
      labels/NAME.png     the label map at the image's size; pixel value = class id (palette PNG)
      overlays/NAME.png   the image with class colours and a legend of the classes found
      probs/NAME.npy      with --save-probs: probabilities (M, h, w) on the 1/16 grid
      classes.txt         the class names, line k = class id k

    EXIF orientation is applied; gray, RGBA, 16-bit and CMYK images are converted to RGB. A file that cannot
    be read is reported and skipped, and the others are still processed; the summary lists the failures.
    Exit status: 0 when every image was segmented, 1 when any failed (or none was found).
    """
    import numpy as np
    from tqdm.auto import tqdm

    from ..atomic import atomic_write_bytes, atomic_write_text
    from ..runtime.images import ImageLoadError, find_images
    from ..runtime.visualize import label_image, overlay, palette, png_bytes

    items = find_images(inputs, recursive=recursive)
    if not items:
        raise click.ClickException("no images found in " + ", ".join(inputs))
    seg = load_segmenter(model, backend, device, no_refine, refine_k, refine_iters, short_side, max_long_side)
    names = seg.class_names
    colours = palette(len(names))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "classes.txt", "".join(f"{n}\n" for n in names))
    failed: list[tuple[Path, str]] = []
    done = 0
    stems = _output_stems(items)
    bar = tqdm(list(zip(items, stems)), desc="segment", unit="img", disable=True if no_progress else None)
    for (path, _), stem in bar:
        try:
            rgb = seg.load(path)
            result = seg(rgb, return_probs=save_probs)
            atomic_write_bytes(out / "labels" / f"{stem}.png", png_bytes(label_image(result.labels, len(names))))
            picture = overlay(rgb, result.labels, names, alpha=alpha, colours=colours)
            atomic_write_bytes(out / "overlays" / f"{stem}.png", png_bytes(picture))
            if save_probs:
                import io

                buf = io.BytesIO()
                np.save(buf, result.probs.astype(np.float32))
                atomic_write_bytes(out / "probs" / f"{stem}.npy", buf.getvalue())
            done += 1
        except (ImageLoadError, OSError, ValueError, RuntimeError, MemoryError) as e:
            msg = str(e) if isinstance(e, ImageLoadError) else f"{path}: {type(e).__name__}: {e}"
            failed.append((path, msg))
            tqdm.write(f"skipped {msg}", file=sys.stderr)
    seg.close()
    click.echo(f"segmented {done} of {len(items)} image(s) into {out} (labels/, overlays/"
               f"{', probs/' if save_probs else ''}) with {len(names)} classes")
    if failed:
        click.echo(f"{len(failed)} failed:", err=True)
        for _, msg in failed:
            click.echo(f"  {msg}", err=True)
        sys.exit(1)
