"""SA-1B annotation documents: reading, validation and atomic writing.

A document is `{"image": {"image_id", "width", "height", "file_name"}, "annotations": [ann, ...]}`.
Every field is kept as it was; the engine only adds fields to each annotation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ssa.atomic import file_mode, write_bytes_atomic, write_json_atomic  # noqa: F401 (re-exported)
from ssa.errors import InputError, read_input
from ssa.masks import decode_checked, mask_extent

BBOX_TOLERANCE = 1e-3  # pixels: bboxes are floats, allow rounding noise at the image border


@dataclass(frozen=True)
class MaskSet:
    """The validated annotations of one image, each mask kept compact: its RLE and its extent.

    rles: N pycocotools RLE dicts (`{"size": [H, W], "counts": bytes}`), in document order.
    extents: (N, 4) int64 [y0, x0, y1, x1): the half-open box of each mask's set pixels.
    bboxes: (N, 4) float64 XYWH pixel boxes as in the document.
    size: (H, W) of the image.

    No image-sized array is held per mask: `region(i)` and `mask(i)` decode one mask when asked
    (pycocotools, C speed), so memory is the RLEs (the request's own bytes) plus 64 bytes a mask.
    """

    rles: tuple
    extents: np.ndarray
    bboxes: np.ndarray
    size: tuple[int, int]

    def __post_init__(self) -> None:
        n = len(self.rles)
        if self.extents.shape != (n, 4) or self.bboxes.shape != (n, 4):
            raise ValueError(f"{n} RLEs, extents {self.extents.shape} and bboxes {self.bboxes.shape} disagree "
                             f"(expected ({n}, 4) each)")

    def __len__(self) -> int:
        return len(self.rles)

    def mask(self, i: int) -> np.ndarray:
        """(H, W) bool: mask i."""
        return mask_utils.decode(self.rles[i]).astype(bool)

    def region(self, i: int) -> np.ndarray:
        """(y1 - y0, x1 - x0) bool, C-contiguous: mask i inside its extent."""
        y0, x0, y1, x1 = (int(v) for v in self.extents[i])
        return np.ascontiguousarray(mask_utils.decode(self.rles[i])[y0:y1, x0:x1], dtype=bool)

    def masks(self) -> np.ndarray:
        """(N, H, W) bool: every mask decoded (small images and tests only: N x H x W bytes)."""
        out = np.zeros((len(self), *self.size), dtype=bool)
        for i in range(len(self)):
            out[i] = self.mask(i)
        return out

    def subset(self, rows) -> MaskSet:
        """The masks at `rows` (indices), in that order."""
        rows = list(rows)
        return MaskSet(tuple(self.rles[i] for i in rows), self.extents[rows].reshape(-1, 4),
                       self.bboxes[rows].reshape(-1, 4), self.size)

    @classmethod
    def from_masks(cls, masks, bboxes) -> MaskSet:
        """From (N, H, W) bool masks (any sequence of (H, W) arrays) and their (N, 4) XYWH bboxes."""
        masks = [np.asarray(m, dtype=bool) for m in masks]
        bboxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
        size = masks[0].shape if masks else (0, 0)
        rles = tuple(mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in masks)
        extents = np.array([mask_extent(m) for m in masks], dtype=np.int64).reshape(-1, 4)
        return cls(rles, extents, bboxes, tuple(size))


class _NotJson(ValueError):
    pass


def _not_json(name: str):
    raise _NotJson(name)


def parse_document(text: str | bytes, source: str | Path | None = None) -> dict[str, Any]:
    """Parse an SA-1B JSON document and check its structure (not yet against an image)."""
    if not text.strip():  # a file truncated to nothing, or never written
        raise InputError("annotation file is empty", source)
    try:
        doc = json.loads(text, parse_constant=_not_json)
    except _NotJson as exc:  # Python reads NaN and Infinity; no JSON parser elsewhere does
        raise InputError(f"invalid JSON ({exc} is not a JSON value)", source) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"invalid JSON ({exc})", source) from exc
    except RecursionError:  # nested deeper than the parser's stack: no annotation file is
        raise InputError("invalid JSON (nested too deeply to be an annotation file)", source) from None
    except ValueError as exc:  # an integer of more than Python's 4,300 digits, and the like
        raise InputError(f"invalid JSON ({str(exc).split(';')[0]})", source) from exc
    if not isinstance(doc, dict):
        raise InputError("annotation file is not a JSON object", source)
    if not isinstance(doc.get("annotations"), list):
        raise InputError("annotation file has no 'annotations' list", source)
    image = doc.get("image")
    if image is not None and not isinstance(image, dict):
        raise InputError("'image' is not an object", source)
    for key in ("width", "height"):
        value = (image or {}).get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InputError(f"image {key} {value!r} is not a positive integer", source)
    for i, ann in enumerate(doc["annotations"]):
        if not isinstance(ann, dict):
            raise InputError(f"annotation #{i} is not an object", source)
        for key in ("bbox", "segmentation"):
            if key not in ann:
                raise InputError(f"annotation {_ann_name(ann, i)} has no '{key}'", source)
    return doc


def read_document(path: str | Path) -> dict[str, Any]:
    """Read and parse an SA-1B JSON file (see `parse_document`)."""
    return parse_document(read_input(path, "annotation file"), path)


def _ann_name(ann: dict[str, Any], index: int) -> str:
    return f"id={ann['id']}" if "id" in ann else f"#{index}"


def check_bbox(bbox: Any, image_size: tuple[int, int]) -> np.ndarray:
    """Validate an XYWH bbox against `image_size` = (H, W); return it as float64 (4,)."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise InputError(f"bbox {bbox!r} is not [x, y, w, h]")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise InputError(f"bbox {bbox!r} has non-numeric or non-finite values")
    x, y, w, h = (float(v) for v in bbox)
    height, width = image_size
    if w < 0 or h < 0:
        raise InputError(f"bbox {list(bbox)} has zero or negative size")
    if x < -BBOX_TOLERANCE or y < -BBOX_TOLERANCE or x + w > width + BBOX_TOLERANCE or y + h > height + BBOX_TOLERANCE:
        raise InputError(f"bbox {list(bbox)} lies outside the image of width {width} and height {height}")
    return np.array([x, y, w, h], dtype=np.float64)


def decode_annotations(doc: dict[str, Any], image_size: tuple[int, int], source: str | Path | None = None) -> MaskSet:
    """Validate every annotation of `doc` against the image and decode its mask.

    image_size: (H, W) of the decoded image. The document's own width/height, when present,
    must agree with it. Raises InputError naming `source` and the annotation for any problem:
    RLE of another size, corrupt RLE, bbox outside the image or of zero size, empty mask.
    """
    height, width = image_size
    image = doc.get("image") or {}
    stated = (image.get("height"), image.get("width"))
    if None not in stated and stated != (height, width):
        raise InputError(
            f"annotation file says the image is {image['width']}x{image['height']} (WxH) "
            f"but the image is {width}x{height}"
            + (" (width and height swapped: if its EXIF orientation turns it, the masks must be of the image "
               "as a viewer shows it)" if stated == (width, height) else ""),
            source,
        )
    anns = doc["annotations"]
    rles, extents = [], np.zeros((len(anns), 4), dtype=np.int64)
    bboxes = np.zeros((len(anns), 4), dtype=np.float64)
    for i, ann in enumerate(anns):
        try:
            bboxes[i] = check_bbox(ann["bbox"], image_size)
            mask, rle = decode_checked(ann["segmentation"], image_size)  # one image-sized array at a time
            extents[i] = mask_extent(mask)
            y0, x0, y1, x1 = extents[i]
            if y1 == 0:
                raise InputError("empty mask (no pixel set)")
            # SAM's boxes have w = x1 - x0 (last column minus first): zero for a mask one pixel
            # wide, and only then
            w, h = bboxes[i, 2], bboxes[i, 3]
            if (w == 0 and x1 - x0 != 1) or (h == 0 and y1 - y0 != 1):
                raise InputError(f"bbox {list(ann['bbox'])} has zero or negative size")
            rles.append(rle)
        except InputError as exc:
            raise InputError(f"annotation {_ann_name(ann, i)}: {exc.problem}", source) from exc
    return MaskSet(tuple(rles), extents, bboxes, (height, width))
