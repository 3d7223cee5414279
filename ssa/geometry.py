"""Crop geometry of the SSA engine (docs/engine.md, "Crops"), as mmcv.imcrop computes it."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Box(NamedTuple):
    """Inclusive integer pixel box: rows y1..y2 and columns x1..x2 both belong to the crop."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        return self.x2 - self.x1 + 1

    @property
    def height(self) -> int:
        return self.y2 - self.y1 + 1


def crop_box(bbox: np.ndarray | list[float], scale: float, image_size: tuple[int, int]) -> Box:
    """The box of an SA-1B XYWH `bbox` scaled by `scale` around its centre, clipped to the image.

    x1 = x, y1 = y, x2 = x + w, y2 = y + h; bw = x2 - x1 + 1 and bh = y2 - y1 + 1; x1, x2 move out
    by bw (scale - 1) / 2 each, y1, y2 by bh (scale - 1) / 2; values are truncated toward zero, then
    clipped to [0, W - 1] (x) and [0, H - 1] (y). image_size is (H, W).
    """
    x, y, w, h = (float(v) for v in bbox)
    box = np.array([x, y, x + w, y + h], dtype=np.float64)
    if float(scale) != 1.0:
        dw = (box[2] - box[0] + 1) * (scale - 1) * 0.5
        dh = (box[3] - box[1] + 1) * (scale - 1) * 0.5
        box = box + np.array([-dw, -dh, dw, dh])
    box = box.astype(np.int32)  # truncation toward zero, as mmcv
    height, width = image_size
    x1, x2 = np.clip(box[[0, 2]], 0, width - 1)
    y1, y2 = np.clip(box[[1, 3]], 0, height - 1)
    return Box(int(x1), int(y1), int(x2), int(y2))


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """The (h, w, ...) region of an (H, W, ...) array inside the inclusive `box` (a view, not a copy)."""
    return array[box.y1 : box.y2 + 1, box.x1 : box.x2 + 1]
