"""An SA-1B-style example set built offline from the real photographs that scikit-image ships.

Masks come from classical segmentation (Felzenszwalb at a coarse and a fine scale, plus SLIC),
so, as with SAM, whole regions and their parts overlap. Each image gets `sa_<n>.jpg` and
`sa_<n>.json` with every SA-1B field (COCO RLE, bbox, area, predicted_iou, point_coords,
stability_score, crop_box).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from ssa.masks import encode_rle, mask_bbox
from ssa.sa1b import write_bytes_atomic, write_json_atomic

# (file in skimage/data, SA-1B id); camera.png is grayscale.
PHOTOS = (("astronaut.png", 1), ("chelsea.png", 2), ("coffee.png", 3), ("motorcycle_left.png", 4),
          ("rocket.jpg", 5), ("camera.png", 6))
MIN_AREA = 100


def _segmentations(rgb: np.ndarray) -> list[np.ndarray]:
    """Label maps at several granularities (coarse first)."""
    from skimage.segmentation import felzenszwalb, slic

    scale = max(rgb.shape[:2]) / 512
    return [
        felzenszwalb(rgb, scale=800 * scale, sigma=0.8, min_size=int(400 * scale * scale)),
        felzenszwalb(rgb, scale=200 * scale, sigma=0.8, min_size=int(150 * scale * scale)),
        slic(rgb, n_segments=40, compactness=10, start_label=0),
    ]


def example_masks(rgb: np.ndarray, max_masks: int = 150) -> list[np.ndarray]:
    """Up to `max_masks` distinct (H, W) bool masks of at least MIN_AREA pixels, largest first."""
    masks, seen = [], set()
    for labels in _segmentations(rgb):
        for value in np.unique(labels):
            mask = labels == value
            key = hash(np.packbits(mask).tobytes())
            if mask.sum() >= MIN_AREA and not mask.all() and key not in seen:
                seen.add(key)
                masks.append(mask)
    masks.sort(key=lambda m: -int(m.sum()))
    return masks[:max_masks]


def annotation(mask: np.ndarray, ann_id: int) -> dict:
    """One SA-1B annotation of an (H, W) bool mask (all fields SAM writes; the scores are placeholders)."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    j = len(ys) // 2  # a point inside the mask, as SAM's prompt point
    return {
        "id": ann_id,
        "bbox": mask_bbox(mask),
        "area": int(mask.sum()),
        "segmentation": encode_rle(mask),
        "predicted_iou": 0.9,
        "point_coords": [[float(xs[j]), float(ys[j])]],
        "stability_score": 0.95,
        "crop_box": [0.0, 0.0, float(width), float(height)],
    }


def sa1b_document(image_id: int, file_name: str, masks: list[np.ndarray]) -> dict:
    """An SA-1B document for `masks` (all fields SAM writes; the SAM scores are placeholders)."""
    height, width = masks[0].shape
    return {"image": {"image_id": image_id, "width": width, "height": height, "file_name": file_name},
            "annotations": [annotation(mask, image_id * 1000 + i) for i, mask in enumerate(masks)]}


def dense_document(rgb: np.ndarray, count: int, image_id: int, file_name: str) -> dict:
    """An SA-1B document with `count` masks on one photo, as dense as SAM's on a busy SA-1B image:
    SLIC superpixels at several granularities (finest first), so masks overlap across levels. Each
    mask is encoded as soon as it is made (never N image-sized arrays at once)."""
    from skimage.segmentation import slic

    height, width = rgb.shape[:2]
    anns: list[dict] = []
    segments = max(4, int(count * 1.25))
    while len(anns) < count and segments >= 2:
        labels = slic(rgb, n_segments=segments, compactness=10, start_label=0)
        for value in range(int(labels.max()) + 1):
            mask = labels == value
            if mask.any() and len(anns) < count:
                anns.append(annotation(mask, image_id * 100_000 + len(anns)))
        segments //= 2
    if len(anns) < count:
        raise ValueError(f"could not make {count} masks on a {width} x {height} image (got {len(anns)})")
    return {"image": {"image_id": image_id, "width": width, "height": height, "file_name": file_name},
            "annotations": anns}


def build_examples(out_dir: str | Path, max_masks: int = 150, photos=PHOTOS) -> list[Path]:
    """Write the example set to `out_dir`; returns the image paths."""
    import skimage

    src = Path(skimage.__file__).parent / "data"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image_id in photos:
        img = Image.open(src / name)
        img = img.convert("L") if img.mode in ("L", "I", "I;16") else img.convert("RGB")
        rgb = np.asarray(img.convert("RGB"))
        masks = example_masks(rgb, max_masks)
        stem = f"sa_{image_id}"
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=92)
        write_bytes_atomic(out_dir / f"{stem}.jpg", buf.getvalue())
        # the masks are of the decoded JPEG's size, which is the source's size
        write_json_atomic(out_dir / f"{stem}.json", sa1b_document(image_id, f"{stem}.jpg", masks))
        written.append(out_dir / f"{stem}.jpg")
    return written
