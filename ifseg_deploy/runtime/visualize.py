"""Pictures of label maps: a fixed colour per class, label PNGs whose pixel values are class ids, and colour
overlays with a legend."""

from __future__ import annotations

import colorsys
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: well-separated hues (golden-ratio steps) at alternating saturation and
    brightness, the same for every run."""
    colours = np.empty((num_classes, 3), dtype=np.uint8)
    for i in range(num_classes):
        h = (0.07 + i * 0.618033988749895) % 1.0
        s = (0.85, 0.55, 0.95)[i % 3]
        v = (0.95, 0.75, 0.60)[(i // 3) % 3]
        colours[i] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)]
    return colours


def colorize(labels: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 colours."""
    return colours[labels]


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """The label map as a PIL image whose pixel values are the class ids: palette mode 'P' (coloured in any
    viewer) for up to 256 classes, 16-bit grey ('I;16') above."""
    if num_classes <= 256:
        ids = np.ascontiguousarray(labels, dtype=np.uint8)
        img = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[:num_classes] = palette(num_classes)
        img.putpalette(pal.ravel().tolist())
        return img
    return Image.fromarray(labels.astype(np.uint16))


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The class colours blended over the image (``alpha`` = colour weight), (H, W, 3) uint8."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    out = np.empty(image.shape[:2] + (3,), dtype=np.uint8)
    step = max(1, (1 << 20) // max(1, labels.shape[1]))  # blocks of about a megapixel: bounded memory
    for r0 in range(0, labels.shape[0], step):
        img = image[r0:r0 + step, :, :3].astype(np.float32)
        col = colorize(labels[r0:r0 + step], colours).astype(np.float32)
        out[r0:r0 + step] = (img * (1 - alpha) + col * alpha).round().clip(0, 255).astype(np.uint8)
    return out


def _legend(picture: Image.Image, rows: list[tuple[tuple[int, int, int], str]], font_size: int,
            panel_w: int | None = None) -> Image.Image:
    """``picture`` with a panel on its right: one colour box and text per row; ``panel_w`` fixes its width."""
    w, h = picture.size
    font = _font(font_size)
    line = font_size + max(4, font_size // 3)
    pad = max(6, font_size // 2)
    if panel_w is None:
        probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
        text_w = max((probe.textbbox((0, 0), t, font=font)[2] for _, t in rows), default=0)
        panel_w = pad * 3 + font_size + text_w
    canvas = Image.new("RGB", (w + panel_w, max(h, pad * 2 + line * len(rows))), (32, 32, 32))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (colour, text) in enumerate(rows):
        y, x = pad + row * line, w + pad
        draw.rectangle([x, y, x + font_size, y + font_size], fill=colour, outline=(255, 255, 255))
        draw.text((x + font_size + pad, y), text, fill=(255, 255, 255), font=font)
    return canvas


def _font_size(height: int) -> int:
    return int(min(28, max(11, height // 36)))


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
            legend: bool = True, colours: np.ndarray | None = None) -> Image.Image:
    """Blend the class colours over the image (``alpha`` = colour weight) and add a legend panel on the right
    listing the classes present, largest area first, with their share of the image."""
    colours = palette(len(class_names)) if colours is None else colours
    picture = Image.fromarray(blend(image, labels, colours, alpha))
    if not legend:
        return picture
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    rows = [(tuple(int(v) for v in colours[c]), f"{class_names[c]}  {100.0 * counts[c] / labels.size:.1f}%")
            for c in present]
    return _legend(picture, rows, _font_size(labels.shape[0]))


def video_frame(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], colours: np.ndarray,
                alpha: float = 0.5, caption: str | None = None) -> np.ndarray:
    """One frame of an overlay video, (H', W', 3) uint8 RGB of the same size for every frame of a given size:
    the blend, a legend of a fixed width listing every class in id order with its share of this frame (or, when
    they do not all fit in the frame's height, the largest ones present), and
    ``caption`` (e.g. the fps) in the top left corner; padded to even sides, as video encoders want."""
    picture = Image.fromarray(blend(image, labels, colours, alpha))
    size = _font_size(labels.shape[0])
    if caption:
        draw = ImageDraw.Draw(picture)
        font = _font(size)
        box = draw.textbbox((4, 4), caption, font=font)
        draw.rectangle([box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3], fill=(0, 0, 0))
        draw.text((4, 4), caption, fill=(255, 255, 255), font=font)
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    pad, line = max(6, size // 2), size + max(4, size // 3)
    fit = max(1, (labels.shape[0] - 2 * pad) // line)
    order = (range(len(class_names)) if len(class_names) <= fit  # else the largest ones present that fit
             else [int(c) for c in np.argsort(-counts, kind="stable")[:fit] if counts[c] > 0])
    rows = [(tuple(int(v) for v in colours[c]), f"{class_names[c]}  {100.0 * counts[c] / labels.size:5.1f}%")
            for c in order]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = max(probe.textbbox((0, 0), f"{name}  100.0%", font=_font(size))[2] for name in class_names)
    canvas = np.asarray(_legend(picture, rows, size, panel_w=pad * 3 + size + widest))
    h, w = canvas.shape[:2]
    return np.pad(canvas, ((0, h % 2), (0, w % 2), (0, 0)))
