"""SA-1B masks: COCO run-length encoding (RLE) through pycocotools.

Masks are `bool` arrays of shape (H, W); RLE dicts are `{"size": [H, W], "counts": str}`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ssa.errors import InputError

# COCO's compressed counts: 6 bits a character, written as chr(48 + value), so '0' (48) to 'o'
# (111); 5 bits of a number each, bit 0x20 set on every character but a number's last, bit 0x10
# of the last its sign; each count from the third on is stored as its difference from the count
# two before. pycocotools parses them unchecked: a string that ends inside a number reads past its
# end and writes past the counts it allocated, a byte over 127 is a negative run (both seen here
# as heap aborts calls later), and a corrupt string decodes to garbage of the right shape. So a
# string reaches pycocotools only once it has been parsed here and found to be exactly what
# pycocotools itself writes for those counts.
_COUNTS_ALPHABET = re.compile(r"[0-o]*")
_COUNTS_ALPHABET_BYTES = re.compile(rb"[0-o]*")
_MAX_DIGITS = 7  # 35 bits: any count of an image under 2^31 pixels, and its difference


def parse_counts(counts: bytes, pixels: int) -> np.ndarray:
    """The run lengths (int64) of COCO compressed `counts` (characters '0'-'o'), checked: every
    number complete and at most 7 characters, every run non-negative, the runs adding up to
    `pixels`. InputError otherwise."""
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0 or c[-1] & 0x20:
        raise InputError("RLE counts are corrupt (the string ends inside a number)" if c.size
                         else "RLE counts are corrupt (empty)")
    last = (c & 0x20) == 0  # the last character of each number
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > _MAX_DIGITS:
        raise InputError(f"RLE counts are corrupt (a number of {int(lengths.max())} characters)")
    number = np.repeat(np.arange(len(ends)), lengths)
    digit = np.arange(c.size) - starts[number]
    values = np.zeros(len(ends), np.int64)
    np.add.at(values, number, (c & 0x1F) << (5 * digit))
    negative = (c[ends] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * lengths[negative])
    runs = values.copy()  # runs[i] = values[i] + runs[i - 2] from the fourth run on
    runs[3::2] = np.cumsum(values[3::2]) + values[1] if len(values) > 3 else runs[3::2]
    runs[4::2] = np.cumsum(values[4::2]) + values[2] if len(values) > 4 else runs[4::2]
    if (runs < 0).any() or int(runs.sum()) != pixels:
        raise InputError(f"RLE counts are corrupt (runs of {int(runs.sum())} pixels, not height * width = {pixels}"
                         + (", some negative)" if (runs < 0).any() else ")"))
    return runs


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
        for c in counts:
            if type(c) is not int or c < 0:  # bool is an int in Python, not in JSON
                raise InputError(f"uncompressed RLE counts hold {c!r}: runs are non-negative integers")
        if sum(counts) != size[0] * size[1]:
            raise InputError("uncompressed RLE counts do not add up to height * width")
        return mask_utils.frPyObjects({"size": list(size), "counts": counts}, size[0], size[1])
    if isinstance(counts, str):
        if not _COUNTS_ALPHABET.fullmatch(counts):
            raise InputError(f"RLE counts are corrupt (a character outside COCO's '0'-'o' alphabet: "
                             f"{_first_foreign(counts)!r})")
        counts = counts.encode("ascii")
    elif isinstance(counts, bytes):
        if not _COUNTS_ALPHABET_BYTES.fullmatch(counts):
            raise InputError(f"RLE counts are corrupt (a byte outside COCO's '0'-'o' alphabet: "
                             f"{_first_foreign(counts.decode('latin-1'))!r})")
    else:
        raise InputError(f"RLE counts has type {type(counts).__name__}, expected a string")
    runs = parse_counts(counts, size[0] * size[1])
    canonical = mask_utils.frPyObjects({"size": list(size), "counts": runs.tolist()}, size[0], size[1])
    if canonical["counts"] != counts:  # a number written with more characters than it needs
        raise InputError("RLE counts are corrupt (not the encoding pycocotools writes for its runs)")
    return canonical


def _first_foreign(counts: str) -> str:
    return next(c for c in counts if not "0" <= c <= "o")


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
    # Runs of zero length between others (allowed by the format, never written by an encoder)
    # describe the mask of fewer runs: re-encoding must give back the same string.
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
