"""A picture of the output: every mask in colour, labelled with its class name."""

from __future__ import annotations

import colorsys
import hashlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def name_colour(name: str) -> tuple[int, int, int]:
    """A stable, saturated colour per class name (the same name is the same colour in every image)."""
    hue = int(hashlib.md5(name.encode("utf-8")).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _label_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel closest to the mask's centroid."""
    ys, xs = np.nonzero(mask)
    i = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(xs[i]), int(ys[i])


def render_labels(image: np.ndarray, masks: np.ndarray, names: list[str], alpha: float = 0.45) -> Image.Image:
    """The image with masks painted largest first (small ones stay visible) and labelled.

    image: (H, W, 3) uint8 RGB; masks: (N, H, W) bool; names: N class names. Labels that would
    cover one already drawn are skipped, larger masks first, so the text stays readable.
    """
    out = image.astype(np.float32).copy()
    order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
    for i in order:
        out[masks[i]] = (1 - alpha) * out[masks[i]] + alpha * np.array(name_colour(names[i]), np.float32)
    canvas = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(11, min(image.shape[:2]) // 40))
    placed: list[tuple[int, int, int, int]] = []
    for i in order:
        if masks[i].sum() < 0.002 * masks[i].size:
            continue
        x, y = _label_point(masks[i])
        left, top, right, bottom = draw.textbbox((x, y), names[i], font=font, anchor="mm")
        box = (left - 3, top - 2, right + 3, bottom + 2)
        if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
            continue
        placed.append(box)
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((x, y), names[i], fill=name_colour(names[i]), font=font, anchor="mm")
    return canvas
