"""Majority votes of the SSA engine. Every tie goes to the lowest index."""

from __future__ import annotations

import numpy as np


def class_counts(label_map: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) int64 pixel count of each class of the (H, W) int `label_map` inside the
    (H, W) bool `mask`."""
    return np.bincount(label_map[mask].ravel(), minlength=num_classes)


def majority_class(label_map: np.ndarray, mask: np.ndarray, num_classes: int) -> int:
    """Most frequent class of the (H, W) int `label_map` inside the (H, W) bool `mask`.

    Ties go to the lowest class index; an empty mask gives class 0 (callers reject empty masks).
    """
    return int(np.argmax(class_counts(label_map, mask, num_classes)))


def pixel_vote(winners: np.ndarray, mask: np.ndarray, num_prompts: int) -> tuple[int, float, float]:
    """CLIPSeg's vote: the prompt that wins most pixels inside `mask` wins.

    winners: (h, w) int, per pixel the index of the prompt with the highest logit. mask: (h, w)
    bool, or any (h', w') bool, which is then resized to (h, w) by nearest neighbour. Returns
    (winning prompt index, share of the mask's pixels it won, `count_margin` of the vote). Ties,
    and an empty mask, go to the lowest prompt index.
    """
    if mask.shape != winners.shape:
        mask = resize_nearest(mask, winners.shape)
    inside = winners[mask]
    if inside.size == 0:
        return 0, 0.0, 1.0
    counts = np.bincount(inside, minlength=num_prompts)
    best = int(np.argmax(counts))
    return best, float(counts[best] / inside.size), count_margin(counts)


def resize_nearest(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) array to `size` = (H, W), as torch 'nearest' does."""
    h, w = mask.shape
    rows = np.minimum((np.arange(size[0]) * (h / size[0])).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(size[1]) * (w / size[1])).astype(np.int64), w - 1)
    return mask[rows[:, None], cols[None, :]]


def count_margin(counts) -> float:
    """(best - runner-up) / total of a vote's counts: how far the vote was from a tie (1.0 when
    only one option got votes or there were none)."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))[::-1]
    total = counts.sum()
    if total == 0 or counts.size < 2:
        return 1.0
    return float((counts[0] - counts[1]) / total)
