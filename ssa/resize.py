"""Bilinear resizing in NumPy with PyTorch's semantics (`F.interpolate(..., mode="bilinear",
align_corners=False)`), so the Triton path needs no torch. Equal to torch up to float rounding."""

from __future__ import annotations

import numpy as np

# Output rows per chunk are chosen so one chunk of (C, rows, W) float32 stays under this size.
CHUNK_BYTES = 64 << 20


def _source_index(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second one."""
    # float32 arithmetic, as PyTorch's CPU kernel computes the source positions
    scale = np.float32(in_size / out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    lo = np.minimum(src.astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo.astype(np.float32)).astype(np.float32)


def _resize_rows(x: np.ndarray, rows: tuple[np.ndarray, np.ndarray, np.ndarray], cols) -> np.ndarray:
    y0, y1, wy = rows
    x0, x1, wx = cols
    top = x[:, y0, :]
    tmp = top + (x[:, y1, :] - top) * wy[None, :, None]
    left = tmp[:, :, x0]
    return left + (tmp[:, :, x1] - left) * wx[None, None, :]


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (C, h, w) or (N, C, h, w) float maps to `size` = (H, W), bilinearly, half-pixel centres."""
    if x.ndim == 4:
        return np.stack([resize_bilinear(v, size) for v in x])
    if x.ndim != 3:
        raise ValueError(f"expected (C, h, w) or (N, C, h, w), got shape {x.shape}")
    x = x.astype(np.float32, copy=False)
    rows = _source_index(size[0], x.shape[1])
    cols = _source_index(size[1], x.shape[2])
    return _resize_rows(x, rows, cols)


def resized_argmax(scores: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """argmax over C of `scores` (C, h, w) resized bilinearly to `size` = (H, W), as (H, W) int64.

    The same as `resize_bilinear(scores, size).argmax(0)` (ties to the lowest class), computed in
    row chunks so a 150-class map of a large image never lives in memory at full size.
    """
    c, h, w = scores.shape
    scores = scores.astype(np.float32, copy=False)
    y0, y1, wy = _source_index(size[0], h)
    cols = _source_index(size[1], w)
    step = max(1, CHUNK_BYTES // max(1, 4 * c * max(size[1], w)))
    out = np.empty(size, dtype=np.int64)
    for start in range(0, size[0], step):
        sl = slice(start, start + step)
        out[sl] = _resize_rows(scores, (y0[sl], y1[sl], wy[sl]), cols).argmax(axis=0)
    return out
