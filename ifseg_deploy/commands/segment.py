"""``ifseg-deploy segment``: label PNGs and colour overlays for images and folders of images."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .options import backend_options, load_segmenter, read_categories, run_time_categories_option


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


@click.command(short_help="Segment images, videos, cameras and streams: label PNGs, colour overlays, an "
                          "overlay video.")
@click.argument("inputs", nargs=-1, metavar="IMAGE|DIR...|VIDEO|URL|PIPELINE")
@click.option("--camera", type=click.IntRange(min=0), default=None, metavar="N",
              help="Read camera N (0: the first; a device path such as /dev/video0 is given as the input).")
@click.option("--model", "-m", required=True, type=click.Path(exists=True),
              help="Adapted-model directory (torch backend) or exported model file.")
@click.option("--out", "-o", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder (created).")
@backend_options
@run_time_categories_option
@click.option("--save-probs", is_flag=True,
              help="Images: also write the class probabilities on the model's 1/16 grid as probs/NAME.npy, "
                   "(M, h, w) float32.")
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Weight of the class colours in the overlay.")
@click.option("--recursive", "-r", is_flag=True, help="Also look for images in sub-folders of DIR inputs.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--save-labels", is_flag=True, help="Streams: also write each frame's label map as a PNG.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Streams: stop after N frames.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None, metavar="SECONDS",
              help="Streams: stop after this many seconds.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Streams: frames run through the model together.")
@click.option("--smooth", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Streams: temporal smoothing, the weight of the past in a moving average of the class "
                   "probabilities (0: off).")
def segment(inputs: tuple[str, ...], camera: int | None, model: str, out_dir: str, backend: str, device: str,
            no_refine: bool, refine_k: int | None, refine_iters: int | None, short_side: int | None,
            max_long_side: int | None, precision: str, compile_model: bool, low_memory: bool, categories: str | None,
            categories_file: str | None, save_probs: bool, alpha: float, recursive: bool, no_progress: bool,
            save_labels: bool, max_frames: int | None, duration: float | None, batch: int, smooth: float) -> None:
    """Segment every IMAGE (and every image file in each DIR), or one VIDEO, camera (--camera N or
    /dev/videoN), network stream URL (rtsp://, http://...) or GStreamer PIPELINE, with the model at --model.

    \b
    Writes, per image NAME, under --out:
      labels/NAME.png     the label map at the image's size; pixel value = class id (palette PNG)
      overlays/NAME.png   the image with class colours and a legend of the classes found
      probs/NAME.npy      with --save-probs: probabilities (M, h, w) on the 1/16 grid
      classes.txt         the class names, line k = class id k
    \b
    and for a stream NAME (a video's name, camera0, ...):
      NAME_overlay.mp4    the frames with class colours, a legend and the fps (NAME_overlay.partial.avi while
                          it runs: it plays even after a kill)
      frames.jsonl        per frame: index, timestamp, ms per stage, latency, class areas
      labels/NAME_000000.png ...  with --save-labels
      summary.json        frames read, segmented and dropped, p50/p99 latency, mean fps (also printed)

    EXIF orientation is applied; gray, RGBA, 16-bit and CMYK images are converted to RGB. A file that cannot
    be read is reported and skipped, and the others are still processed; the summary lists the failures.
    A stream stops at its end, at --max-frames or --duration, or by Ctrl-C or SIGTERM, with a finished video.
    Exit status: 0 when every image was segmented (a stream: it ended or was stopped), 1 when any failed, none
    was found, or the stream failed (a damaged video: after the frames before the damage).
    """
    stream_spec = _stream_spec(inputs, camera)
    names = read_categories(categories, categories_file, required=False)

    def load() -> Any:
        return load_segmenter(model, backend, device, no_refine, refine_k, refine_iters, short_side, max_long_side,
                              names, precision, compile_model, low_memory)

    image_only = {"--save-probs": save_probs, "--recursive": recursive}
    stream_only = {"--save-labels": save_labels, "--max-frames": max_frames is not None,
                   "--duration": duration is not None, "--batch": batch != 1, "--smooth": smooth != 0.0}
    wrong = [k for k, v in (image_only if stream_spec is not None else stream_only).items() if v]
    if wrong:
        what = "images" if stream_spec is not None else "videos, cameras and streams"
        raise click.UsageError(f"{', '.join(wrong)} applies to {what} only")
    if stream_spec is None:
        from ..runtime.images import find_images

        items = find_images(inputs, recursive=recursive)
        if not items:
            raise click.ClickException("no images found in " + ", ".join(inputs))
        seg = load()
        _segment_images(seg, items, Path(out_dir), save_probs=save_probs, alpha=alpha, no_progress=no_progress)
        return
    from ..atomic import atomic_write_text
    from ..runtime.sources import open_source
    from .segment_video import run_stream, stream_name

    source = open_source(stream_spec)  # a camera or URL that fails, fails before the model loads
    try:
        seg = load()
    except BaseException:
        source.close()
        raise
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "classes.txt", "".join(f"{n}\n" for n in seg.class_names))
        status = run_stream(seg, source, stream_name(stream_spec), out, alpha=alpha, save_labels=save_labels,
                            max_frames=max_frames, duration=duration, batch=batch, smooth=smooth)
    finally:
        source.close()
        seg.close()
    if status:
        sys.exit(status)


def _stream_spec(inputs: tuple[str, ...], camera: int | None) -> str | int | None:
    """The one stream input (a camera index for --camera), or None for images; mixtures are usage errors."""
    from .segment_video import is_stream_input

    streams = [i for i in inputs if is_stream_input(i)]
    if camera is not None and inputs:
        raise click.UsageError("give either --camera N or inputs, not both")
    if camera is not None:
        return camera
    if not inputs:
        raise click.UsageError("give images, folders, a video, a URL or a pipeline (or --camera N)")
    if streams and len(inputs) > 1:
        raise click.UsageError(f"give one video, URL or pipeline at a time, without images (got {len(inputs)} "
                               "inputs)")
    return streams[0] if streams else None


def _segment_images(seg: Any, items: list[tuple[Path, Path | None]], out: Path, *, save_probs: bool, alpha: float,
                    no_progress: bool) -> None:
    """Label PNGs and overlays of every image; exit 1 when any failed."""
    import numpy as np
    from tqdm.auto import tqdm

    from ..atomic import atomic_write_bytes, atomic_write_text
    from ..runtime.images import ImageLoadError
    from ..runtime.visualize import label_image, overlay, palette, png_bytes

    names = seg.class_names
    colours = palette(len(names))
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
