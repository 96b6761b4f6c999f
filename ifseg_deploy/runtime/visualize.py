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


def overlay(image: np.ndarray, labels: np.ndarray, class_names: Sequence[str], alpha: float = 0.5,
            legend: bool = True, colours: np.ndarray | None = None) -> Image.Image:
    """Blend the class colours over the image (``alpha`` = colour weight) and add a legend panel on the right
    listing the classes present, largest area first, with their share of the image."""
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    colours = palette(len(class_names)) if colours is None else colours
    blend = np.empty(image.shape[:2] + (3,), dtype=np.uint8)
    step = max(1, (1 << 20) // max(1, labels.shape[1]))  # blocks of about a megapixel: bounded memory
    for r0 in range(0, labels.shape[0], step):
        img = image[r0:r0 + step, :, :3].astype(np.float32)
        col = colorize(labels[r0:r0 + step], colours).astype(np.float32)
        blend[r0:r0 + step] = (img * (1 - alpha) + col * alpha).round().clip(0, 255).astype(np.uint8)
    picture = Image.fromarray(blend)
    if not legend:
        return picture
    h, w = labels.shape
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    present = [int(c) for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    size = int(min(28, max(11, h // 36)))
    font = _font(size)
    line = size + max(4, size // 3)
    pad = max(6, size // 2)
    texts = [f"{class_names[c]}  {100.0 * counts[c] / labels.size:.1f}%" for c in present]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max((probe.textbbox((0, 0), t, font=font)[2] for t in texts), default=0)
    panel_w = pad * 3 + size + text_w
    panel_h = pad * 2 + line * len(present)
    canvas = Image.new("RGB", (w + panel_w, max(h, panel_h)), (32, 32, 32))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, (c, text) in enumerate(zip(present, texts)):
        y = pad + row * line
        x = w + pad
        draw.rectangle([x, y, x + size, y + size], fill=tuple(int(v) for v in colours[c]), outline=(255, 255, 255))
        draw.text((x + size + pad, y), text, fill=(255, 255, 255), font=font)
    return canvas
