"""A picture of the output to compare with the photo: every mask a translucent fill of its class's
colour with an outline, class names written inside their masks where they fit, and a legend of the
classes present beside the image. Large images are scaled down for viewing."""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ssa.masks import mask_extent

MAX_SIDE = 1600  # longest side of the drawn photo, in pixels (SA-1B photos are ~1500 x 2250)
FILL_ALPHA = 0.5
LEGEND_CHARS = 40  # longer names are cut in the legend (labels on the photo are never cut)
MIN_LABEL_SHARE = 0.001  # masks smaller than this share of the image get no label (the legend has them)


def name_colour(name: str) -> tuple[int, int, int]:
    """A stable, saturated colour per class name (the same name is the same colour in every image)."""
    hue = int(hashlib.md5(name.encode("utf-8")).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class Picture:
    """The drawn picture and where things went (in its pixels)."""

    image: Image.Image
    scale: float  # drawn photo size / original size
    photo_size: tuple[int, int]  # (width, height) of the drawn photo (the legend is to its right)
    labels: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)  # (name, box)
    legend: list[str] = field(default_factory=list)  # class names, most pixels first


Region = tuple[tuple[int, int, int, int], np.ndarray]  # ((y0, y1, x0, x1), the mask inside that box)


def _scaled(image: np.ndarray, masks, max_side: int) -> tuple[np.ndarray, list[Region], float]:
    """The photo scaled to at most `max_side`, and each mask at that scale as its extent and the
    pixels inside it. masks: (N, H, W) bool or an `ssa.sa1b.MaskSet` (decoded one at a time)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    photo = image if scale == 1.0 else np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    regions = []
    for i in range(len(masks)):
        m = masks.mask(i) if hasattr(masks, "mask") else np.asarray(masks[i], dtype=bool)
        if scale != 1.0:
            m = np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST))
        y0, x0, y1, x1 = mask_extent(m)
        box = (y0, y1, x0, x1)
        regions.append((box, m[y0:y1, x0:x1].copy()))
    return photo, regions, scale


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The mask's pixels within `width` of its border (or of the image's)."""
    inner = mask.copy()
    for _ in range(width):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = False
        shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
    return mask & ~inner


def _box_sums(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sum of `grid` over every h x w window (top-left anchored)."""
    table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), np.int64)
    table[1:, 1:] = grid.astype(np.int64).cumsum(0).cumsum(1)
    return table[h:, w:] - table[:-h, w:] - table[h:, :-w] + table[:-h, :-w]


def _place(box: tuple[int, int, int, int], region: np.ndarray, taken: np.ndarray, w: int,
           h: int) -> tuple[int, int] | None:
    """Top-left (x, y) of a w x h box wholly inside the mask (`region` within its extent `box`),
    clear of `taken`, nearest the mask's centroid; None when no such box exists."""
    y0, y1, x0, x1 = box
    ys, xs = np.nonzero(region)
    if len(ys) < w * h or y1 - y0 < h or x1 - x0 < w:
        return None
    fits = (_box_sums(region, h, w) == w * h) & (_box_sums(taken[y0:y1, x0:x1], h, w) == 0)
    cy, cx = np.nonzero(fits)
    if len(cy) == 0:
        return None
    centre_y, centre_x = ys.mean() - h / 2, xs.mean() - w / 2
    i = int(np.argmin((cy - centre_y) ** 2 + (cx - centre_x) ** 2))
    return int(cx[i] + x0), int(cy[i] + y0)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def render(image: np.ndarray, masks, names: list[str], max_side: int = MAX_SIDE,
           alpha: float = FILL_ALPHA) -> Picture:
    """Draw the labelled masks over the photo.

    image: (H, W, 3) uint8 RGB; masks: (N, H, W) bool or an `ssa.sa1b.MaskSet` (decoded one at a
    time, so memory follows the masks' extents, not N x H x W); names: N class names. Masks are filled
    largest first, so small ones stay visible on top; each gets an outline in its colour. A label
    is written only where its box fits wholly inside its mask without covering another label
    (largest masks first), so every label lies on its own mask and on the canvas.
    """
    if len(names) != len(masks):
        raise ValueError(f"{len(names)} names for {len(masks)} masks")
    photo, regions, scale = _scaled(image, masks, max_side)
    h, w = photo.shape[:2]
    areas = np.array([int(m.sum()) for _, m in regions], dtype=np.int64)
    order = np.argsort(-areas, kind="stable")
    out = photo.astype(np.float32)
    colours = {n: np.array(name_colour(n), np.float32) for n in set(names)}
    for i in order:  # within each mask's extent: a few hundred masks stay fast on large images
        (y0, y1, x0, x1), m = regions[i]
        region = out[y0:y1, x0:x1]
        region[m] = (1 - alpha) * region[m] + alpha * colours[names[i]]
    line = max(1, round(max(h, w) / 800))
    for i in order:
        (y0, y1, x0, x1), m = regions[i]  # a tight extent: its border rows and columns are the mask's edge
        out[y0:y1, x0:x1][_outline(m, line)] = colours[names[i]]
    photo_drawn = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))

    font = _font(max(11, min(h, w) // 45))
    draw = ImageDraw.Draw(photo_drawn)
    taken = np.zeros((h, w), bool)
    labels = []
    for i in order:
        if areas[i] < MIN_LABEL_SHARE * h * w:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), names[i], font=font)
        bw, bh = right - left + 6, bottom - top + 4
        spot = _place(*regions[i], taken, bw, bh)
        if spot is None:
            continue
        x, y = spot
        box = (x, y, x + bw, y + bh)
        taken[y : y + bh, x : x + bw] = True
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=(0, 0, 0))
        draw.text((x + 3 - left, y + 2 - top), names[i], fill=tuple(int(c) for c in colours[names[i]]), font=font)
        labels.append((names[i], box))

    legend = _legend_order(names, areas)
    canvas = _with_legend(photo_drawn, legend, font)
    return Picture(canvas, scale, (w, h), labels, legend)


def _legend_order(names: list[str], areas: np.ndarray) -> list[str]:
    total: dict[str, int] = {}
    for name, area in zip(names, areas):
        total[name] = total.get(name, 0) + int(area)
    return sorted(total, key=lambda n: (-total[n], n))


def _with_legend(photo: Image.Image, legend: list[str], font) -> Image.Image:
    """The photo with a legend panel to its right: a colour swatch and the name of each class, in
    as many columns as the photo's height needs."""
    if not legend:
        return photo
    probe = ImageDraw.Draw(photo)
    row = probe.textbbox((0, 0), "Ag", font=font)[3] + 8
    pad = row // 2
    per_column = max(1, (photo.height - 2 * pad) // row)
    columns = [legend[i : i + per_column] for i in range(0, len(legend), per_column)]
    shown = {n: n if len(n) <= LEGEND_CHARS else n[: LEGEND_CHARS - 1] + "\u2026" for n in legend}
    widths = [max(probe.textlength(shown[n], font=font) for n in col) + row + pad for col in columns]
    canvas = Image.new("RGB", (photo.width + int(sum(widths)) + 2 * pad, photo.height), (255, 255, 255))
    canvas.paste(photo, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = photo.width + pad
    for col, width in zip(columns, widths):
        for j, name in enumerate(col):
            y = pad + j * row
            draw.rectangle((x, y + 2, x + row - 8, y + row - 6), fill=name_colour(name), outline=(0, 0, 0))
            draw.text((x + row, y + 1), shown[name], fill=(0, 0, 0), font=font)
        x += int(width)
    return canvas


def render_labels(image: np.ndarray, masks, names: list[str]) -> Image.Image:
    """The picture written as `<stem>_semantic.png` (see `render`)."""
    return render(image, masks, names).image
