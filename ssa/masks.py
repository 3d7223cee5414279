"""SA-1B masks: COCO run-length encoding (RLE) through pycocotools.

Masks are `bool` arrays of shape (H, W); RLE dicts are `{"size": [H, W], "counts": str}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ssa.errors import InputError


def rle_object(segmentation: Any, image_size: tuple[int, int]) -> dict[str, Any]:
    """The pycocotools RLE (`{"size", "counts": bytes}`, compressed) of one COCO RLE, checked
    against `image_size` = (H, W) without decoding it. InputError for anything that is not a
    compressed or uncompressed RLE of that size."""
    if not isinstance(segmentation, dict) or "size" not in segmentation or "counts" not in segmentation:
        raise InputError("segmentation is not a COCO RLE dict with 'size' and 'counts'")
    size = segmentation["size"]
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise InputError(f"RLE size {size!r} is not [height, width] of positive integers")
    if tuple(size) != tuple(image_size):
        raise InputError(f"RLE size {list(size)} differs from the image size {list(image_size)} (height, width)")
    counts = segmentation["counts"]
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != size[0] * size[1]:
            raise InputError("uncompressed RLE counts do not add up to height * width")
        return mask_utils.frPyObjects({"size": list(size), "counts": counts}, size[0], size[1])
    if isinstance(counts, str):
        return {"size": list(size), "counts": counts.encode("ascii", errors="replace")}
    if isinstance(counts, bytes):
        return {"size": list(size), "counts": counts}
    raise InputError(f"RLE counts has type {type(counts).__name__}, expected a string")


def decode_rle(segmentation: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Decode one COCO RLE into an (H, W) bool mask, checking it against `image_size` = (H, W).

    Raises InputError for anything that is not a valid compressed or uncompressed RLE of that size.
    """
    return decode_checked(segmentation, image_size)[0]


def decode_checked(segmentation: Any, image_size: tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
    """(the (H, W) bool mask, its pycocotools RLE) of one COCO RLE; see `decode_rle`."""
    rle = rle_object(segmentation, image_size)
    try:
        mask = mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises bare Exceptions for corrupt strings
        raise InputError(f"RLE counts are corrupt (pycocotools: {exc})") from exc
    # pycocotools does not validate compressed counts: a corrupt string decodes to garbage of the
    # right shape. Re-encoding must give back the same string for a valid RLE.
    if isinstance(segmentation["counts"], (str, bytes)) and \
            mask_utils.encode(np.asfortranarray(mask))["counts"] != rle["counts"]:
        raise InputError("RLE counts are corrupt (they do not describe a mask of the stated size)")
    return mask.astype(bool), rle


def mask_extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1): the half-open extent of the set pixels of an (H, W) bool mask ((0, 0, 0, 0)
    for an empty mask)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return 0, 0, 0, 0
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return y0, int(cols[0]), y1, int(cols[-1]) + 1


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Encode an (H, W) bool mask as a JSON-ready COCO RLE `{"size": [H, W], "counts": str}`."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_bbox(mask: np.ndarray) -> list[float]:
    """SA-1B/COCO bbox [x, y, w, h] of an (H, W) bool mask (as pycocotools computes it)."""
    return [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))]
