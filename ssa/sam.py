"""SAM's automatic mask generator ("SSA + SAM": masks for images that have none).

The algorithm of segment-anything's `SamAutomaticMaskGenerator`, with its defaults: a grid of
point prompts over the image (and over overlapping crops when `crop_n_layers` > 0); SAM decodes
three masks per point; masks are kept when their predicted IoU and their stability score clear
the thresholds, and when their box does not touch a crop's inner edge; box NMS within each crop,
then across crops (smaller crops preferred); optionally small regions and holes removed; each
mask returned as COCO RLE with the SA-1B fields.

The models are injected (`SamModels`): the reference runs SAM in PyTorch a batch of 64 points at
a time, as its authors do; the Triton model decodes every point of a crop in one request. The
rest is this module, shared by both, so their masks differ only by the models' float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ssa.params import SamParams

SAM_SIDE = 1024  # SAM's input side: the longest image side is resized to it, the rest padded
LOW_RES = 256  # side of the masks the decoder returns
EDGE_TOLERANCE = 20.0  # pixels: a box this close to a crop's inner edge is cut by the crop

class SamModels(Protocol):
    """SAM as two tensor functions on `device`."""

    device: torch.device

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(1, 3, 1024, 1024) normalised, padded image -> (1, C, 64, 64) image embeddings."""

    def decode(self, embeddings: torch.Tensor, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, 64, 64) embeddings and (P, 2) float32 point prompts in the 1024 frame (all
        foreground) -> predicted IoUs (P, 3) and low-resolution mask logits (P, 3, 256, 256)."""


# ---------------------------------------------------------------- grids and crops
def point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) points (x, y) in [0, 1], centred in an n x n grid of cells, x fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def crop_boxes(image_size: tuple[int, int], n_layers: int, overlap_ratio: float) -> tuple[list[list[int]], list[int]]:
    """The crops (x0, y0, x1, y1) of every layer and each one's layer: layer 0 is the whole image,
    layer i tiles it into 2^i x 2^i overlapping crops."""
    h, w = image_size
    boxes, layers = [[0, 0, w, h]], [0]
    short = min(h, w)
    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * short * (2 / n))
        crop_w = math.ceil((overlap * (n - 1) + w) / n)
        crop_h = math.ceil((overlap * (n - 1) + h) / n)
        xs = [int((crop_w - overlap) * k) for k in range(n)]
        ys = [int((crop_h - overlap) * k) for k in range(n)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, w), min(y0 + crop_h, h)])
            layers.append(i + 1)
    return boxes, layers


def resized_side(size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) after resizing the longest side to 1024 (rounded as SAM rounds)."""
    h, w = size
    scale = SAM_SIDE / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


# ---------------------------------------------------------------- mask arithmetic
def stability_scores(logits: torch.Tensor, threshold: float, offset: float) -> torch.Tensor:
    """IoU between the mask thresholded at threshold + offset and at threshold - offset."""
    inter = (logits > threshold + offset).sum(dim=(-1, -2), dtype=torch.int32)
    union = (logits > threshold - offset).sum(dim=(-1, -2), dtype=torch.int32)
    return inter.double() / union.clamp(min=1).double()


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) int64 boxes (x0, y0, x1, y1) of (N, H, W) bool masks, x1/y1 the last set column/row
    (inclusive); an empty mask gets [0, 0, 0, 0]."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    bottom = torch.where(rows, ar_h, -1).max(dim=1).values
    top = torch.where(rows, ar_h, h).min(dim=1).values
    right = torch.where(cols, ar_w, -1).max(dim=1).values
    left = torch.where(cols, ar_w, w).min(dim=1).values
    out = torch.stack([left, top, right, bottom], dim=1)
    empty = ~rows.any(dim=1)
    out[empty] = 0
    return out


def near_crop_edge(boxes: torch.Tensor, crop_box: list[int], image_size: tuple[int, int]) -> torch.Tensor:
    """(N,) bool: boxes (in image coordinates) within 20 px of an edge of the crop that is not an
    edge of the image (the object probably continues outside the crop)."""
    crop = torch.tensor(crop_box, dtype=torch.float32, device=boxes.device)
    whole = torch.tensor([0, 0, image_size[1], image_size[0]], dtype=torch.float32, device=boxes.device)
    b = boxes.float()
    at_crop = torch.isclose(b, crop[None], atol=EDGE_TOLERANCE, rtol=0)
    at_image = torch.isclose(b, whole[None], atol=EDGE_TOLERANCE, rtol=0)
    return (at_crop & ~at_image).any(dim=1)


def box_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices kept by greedy non-maximum suppression (IoU of xyxy boxes > threshold suppresses),
    highest score first; ties keep the earlier box."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64)
    b = boxes.double().cpu()
    order = torch.sort(scores.double().cpu(), descending=True, stable=True).indices
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    x0 = torch.maximum(b[:, None, 0], b[None, :, 0])
    y0 = torch.maximum(b[:, None, 1], b[None, :, 1])
    x1 = torch.minimum(b[:, None, 2], b[None, :, 2])
    y1 = torch.minimum(b[:, None, 3], b[None, :, 3])
    inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp(min=1e-12)
    suppressed = torch.zeros(len(b), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > threshold
    return torch.tensor(keep, dtype=torch.int64)


def remove_small_regions(mask: np.ndarray, area: int, mode: str) -> tuple[np.ndarray, bool]:
    """Remove islands ("islands") or fill holes ("holes") smaller than `area` (8-connectivity);
    (mask, whether it changed)."""
    from scipy import ndimage

    working = (mask if mode == "islands" else ~mask)
    labels, n = ndimage.label(working, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask, False
    sizes = np.bincount(labels.ravel())[1:]
    small = np.flatnonzero(sizes < area) + 1  # labels of the regions below `area`
    if small.size == 0:
        return mask, False
    if mode == "islands":  # keep the large islands (the largest one when every island is small)
        large = np.flatnonzero(sizes >= area) + 1
        return np.isin(labels, large if large.size else [int(np.argmax(sizes)) + 1]), True
    return mask | np.isin(labels, small), True  # holes: the mask plus its small holes


# ---------------------------------------------------------------- one image
def sam_pixels(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """(1, 3, 1024, 1024) float32 SAM input of an (h, w, 3) uint8 image (longest side resized to
    1024 bilinearly, ImageNet-normalised, zero-padded bottom-right), and the resized (h, w)."""
    from PIL import Image

    rh, rw = resized_side(image.shape[:2])
    resized = np.asarray(Image.fromarray(image).resize((rw, rh), Image.Resampling.BILINEAR), dtype=np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
    std = np.array([0.229, 0.224, 0.225], np.float32) * 255
    out = np.zeros((1, 3, SAM_SIDE, SAM_SIDE), np.float32)
    out[0, :, :rh, :rw] = ((resized - mean) / std).transpose(2, 0, 1)
    return torch.from_numpy(out), (rh, rw)


def upscale_logits(low_res: torch.Tensor, resized: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(N, 256, 256) logits -> (N, h, w): to 1024 bilinearly, the padding cut off, then to the
    crop's size bilinearly."""
    x = F.interpolate(low_res[:, None].float(), size=(SAM_SIDE, SAM_SIDE), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[:, 0]


# bytes of full-size mask logits upscaled at once (float32, crop size): a batch of points goes in
# slices of this, so a large photo's 64 x 3 full-size logits never live together
FULL_LOGITS_BYTES = 256 << 20


@dataclass
class Region:
    """One mask kept compact: its box (x0, y0, x1, y1, inclusive, image pixels) and the run-length
    encoding (pycocotools) of its pixels inside that box, so a kept mask costs its outline, not its
    area."""

    box: tuple[int, int, int, int]
    rle: dict

    @classmethod
    def inside(cls, box: tuple[int, int, int, int], pixels: np.ndarray) -> Region:
        """From the (y1 - y0 + 1, x1 - x0 + 1) bool pixels inside `box`."""
        from pycocotools import mask as mask_utils

        return cls(tuple(int(v) for v in box), mask_utils.encode(np.asfortranarray(pixels.astype(np.uint8))))

    @classmethod
    def of(cls, mask: np.ndarray) -> Region:
        """From an (H, W) bool mask of the image."""
        x0, y0, x1, y1 = (int(v) for v in mask_boxes(torch.from_numpy(mask[None]))[0])
        return cls.inside((x0, y0, x1, y1), mask[y0 : y1 + 1, x0 : x1 + 1])

    def full(self, size: tuple[int, int]) -> np.ndarray:
        """(H, W) bool: the mask on the whole image."""
        from pycocotools import mask as mask_utils

        out = np.zeros(size, dtype=bool)
        x0, y0, x1, y1 = self.box
        out[y0 : y1 + 1, x0 : x1 + 1] = mask_utils.decode(self.rle).astype(bool)
        return out


@dataclass
class Kept:
    """Masks kept so far (one crop's, or the image's), in image coordinates."""

    regions: list[Region]
    boxes: torch.Tensor  # (N, 4) xyxy, inclusive, int64
    iou: torch.Tensor  # (N,)
    stability: torch.Tensor  # (N,)
    points: torch.Tensor  # (N, 2) the prompt of each mask, image pixels
    crops: list[list[int]]  # the crop box each mask came from

    def take(self, keep: torch.Tensor | list[int]) -> Kept:
        idx = [int(i) for i in keep]
        t = torch.tensor(idx, dtype=torch.int64)
        return Kept([self.regions[i] for i in idx], self.boxes[t], self.iou[t], self.stability[t], self.points[t],
                    [self.crops[i] for i in idx])

    @staticmethod
    def cat(parts: list[Kept]) -> Kept:
        return Kept([r for p in parts for r in p.regions], torch.cat([p.boxes for p in parts]),
                    torch.cat([p.iou for p in parts]), torch.cat([p.stability for p in parts]),
                    torch.cat([p.points for p in parts]), [c for p in parts for c in p.crops])


def _filter_batch(low_res: torch.Tensor, iou: torch.Tensor, points: torch.Tensor, crop_box: list[int],
                  image_size: tuple[int, int], resized: tuple[int, int], p: SamParams) -> Kept:
    """One batch of decoded points (P, 3, ...) -> the masks it keeps, each as its box and pixels
    (image coordinates). Full-size logits are made a slice at a time (FULL_LOGITS_BYTES)."""
    n_masks = low_res.shape[1]
    low_res = low_res.reshape(-1, *low_res.shape[2:])
    iou = iou.reshape(-1).float()
    points = points.repeat_interleave(n_masks, dim=0)
    keep = iou > p.pred_iou_thresh
    low_res, iou, points = low_res[keep], iou[keep], points[keep]
    crop_h, crop_w = crop_box[3] - crop_box[1], crop_box[2] - crop_box[0]
    offset = torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], device=low_res.device)
    step = max(1, FULL_LOGITS_BYTES // (4 * crop_h * crop_w))
    regions, boxes, ious, stabilities, pts = [], [], [], [], []
    for start in range(0, len(low_res), step):
        sl = slice(start, start + step)
        logits = upscale_logits(low_res[sl], resized, (crop_h, crop_w))
        stability = stability_scores(logits, p.mask_threshold, p.stability_score_offset)
        good = stability >= p.stability_score_thresh
        masks = logits[good] > p.mask_threshold
        del logits
        mboxes = mask_boxes(masks) + offset
        edge = ~near_crop_edge(mboxes, crop_box, image_size)
        masks, mboxes = masks[edge], mboxes[edge]
        for m, (x0, y0, x1, y1) in zip(masks, mboxes.tolist()):
            cx, cy = x0 - crop_box[0], y0 - crop_box[1]
            regions.append(Region.inside((x0, y0, x1, y1), m[cy : cy + y1 - y0 + 1, cx : cx + x1 - x0 + 1].cpu().numpy()))
        boxes.append(mboxes.cpu())
        ious.append(iou[sl][good][edge].cpu())
        stabilities.append(stability[good][edge].cpu())
        pts.append(points[sl][good][edge].cpu())
    if not boxes:
        empty = torch.zeros(0)
        return Kept([], torch.zeros((0, 4), dtype=torch.int64), empty, empty.double(), torch.zeros((0, 2)), [])
    return Kept(regions, torch.cat(boxes), torch.cat(ious), torch.cat(stabilities), torch.cat(pts),
                [crop_box] * len(regions))


def generate_masks(image: np.ndarray, models: SamModels, params: SamParams = SamParams(),
                   points_per_call: int | None = None) -> list[dict[str, Any]]:
    """SA-1B annotations of SAM's masks of `image` ((H, W, 3) uint8 RGB), in output order.

    points_per_call: points decoded per model call (default `params.points_per_batch`; the
    Triton model passes the crop's whole grid). Kept masks are held as their boxes and the RLE of
    the pixels inside them, never as image-sized arrays; full-size logits are made a slice of
    FULL_LOGITS_BYTES at a time, and one image-sized mask exists at a time, to encode.
    """
    from pycocotools import mask as mask_utils

    h, w = image.shape[:2]
    grids = [point_grid(max(1, int(params.points_per_side / params.crop_n_points_downscale_factor ** i)))
             for i in range(params.crop_n_layers + 1)]
    boxes, layers = crop_boxes((h, w), params.crop_n_layers, params.crop_overlap_ratio)
    per_crop: list[Kept] = []
    for crop_box, layer in zip(boxes, layers):
        x0, y0, x1, y1 = crop_box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        pixels, resized = sam_pixels(crop)
        embeddings = models.embed(pixels.to(models.device))
        points = torch.from_numpy(grids[layer] * np.array([x1 - x0, y1 - y0])).float()  # crop pixels
        frame = torch.tensor([resized[1] / (x1 - x0), resized[0] / (y1 - y0)], dtype=torch.float32)
        call = points_per_call or params.points_per_batch
        parts = []
        for start in range(0, len(points), call):
            batch = points[start : start + call]
            iou, low_res = models.decode(embeddings, (batch * frame).to(models.device))
            batch = batch.to(low_res.device)
            for k in range(0, len(batch), params.points_per_batch):  # full-size logits: a batch at a time
                sl = slice(k, k + params.points_per_batch)
                parts.append(_filter_batch(low_res[sl], iou[sl], batch[sl], crop_box, (h, w), resized, params))
        kept = Kept.cat(parts)
        kept = kept.take(box_nms(kept.boxes, kept.iou, params.box_nms_thresh))
        kept.points = kept.points + torch.tensor([x0, y0], dtype=kept.points.dtype)
        per_crop.append(kept)
    kept = Kept.cat(per_crop)
    if len(boxes) > 1 and len(kept.regions):  # across crops: the smaller crop's mask wins
        areas = torch.tensor([(c[2] - c[0]) * (c[3] - c[1]) for c in kept.crops], dtype=torch.float64)
        kept = kept.take(box_nms(kept.boxes, 1.0 / areas, params.crop_nms_thresh))
    if params.min_mask_region_area > 0 and len(kept.regions):
        kept = _small_regions(kept, (h, w), params)
    out = []
    for i, region in enumerate(kept.regions):
        rle = mask_utils.encode(np.asfortranarray(region.full((h, w)).astype(np.uint8)))
        x0b, y0b, x1b, y1b = (int(v) for v in kept.boxes[i])
        c = kept.crops[i]
        out.append({
            "id": i,
            "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_utils.area(rle)),
            "bbox": [x0b, y0b, x1b - x0b, y1b - y0b],
            "predicted_iou": float(kept.iou[i]),
            "point_coords": [[float(kept.points[i, 0]), float(kept.points[i, 1])]],
            "stability_score": float(kept.stability[i]),
            "crop_box": [c[0], c[1], c[2] - c[0], c[3] - c[1]],
        })
    return out


def _small_regions(kept: Kept, size: tuple[int, int], p: SamParams) -> Kept:
    """Remove small islands and holes of each mask, then NMS again (changed masks lose ties), as
    segment-anything's postprocess_small_regions. One image-sized mask at a time."""
    regions, scores = [], []
    for region in kept.regions:
        m, changed = remove_small_regions(region.full(size), p.min_mask_region_area, "holes")
        unchanged = not changed
        m, changed = remove_small_regions(m, p.min_mask_region_area, "islands")
        unchanged = unchanged and not changed
        regions.append(Region.of(m) if not unchanged else region)
        scores.append(float(unchanged))
    new_boxes = torch.tensor([r.box for r in regions], dtype=torch.int64).reshape(-1, 4)
    kept = Kept(regions, new_boxes, kept.iou, kept.stability, kept.points, kept.crops)
    return kept.take(box_nms(new_boxes, torch.tensor(scores), p.box_nms_thresh))


def sa1b_document(image_size: tuple[int, int], file_name: str, annotations: list[dict], image_id: int = 0) -> dict:
    """An SA-1B document for generated annotations."""
    return {"image": {"image_id": image_id, "width": image_size[1], "height": image_size[0], "file_name": file_name},
            "annotations": annotations}


# ---------------------------------------------------------------- comparing two paths' masks
BOX_NMS_TOLERANCE = 0.02  # box IoU within this of an NMS threshold may fall on either side
SCORE_TOLERANCE = 1e-3  # predicted IoU: the decoder's export tolerance
STABILITY_TOLERANCE = 0.01


def _box_iou(a, b) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - iw * ih
    return iw * ih / union if union > 0 else 0.0


def near_threshold(ann: dict, others: list[dict], p: SamParams) -> bool:
    """Whether a mask's presence rests on a decision within the export's rounding of a threshold:
    its predicted IoU, its stability score, or its box overlap with another mask (NMS)."""
    if abs(ann["predicted_iou"] - p.pred_iou_thresh) <= SCORE_TOLERANCE:
        return True
    if abs(ann["stability_score"] - p.stability_score_thresh) <= STABILITY_TOLERANCE:
        return True
    return any(abs(_box_iou(ann["bbox"], o["bbox"]) - t) <= BOX_NMS_TOLERANCE
               for o in others for t in (p.box_nms_thresh, p.crop_nms_thresh))


def compare_masks(reference: dict, other: dict, p: SamParams) -> dict:
    """Match each reference mask to one of `other`'s (mask IoU >= 0.99 and bbox within 1 px). Masks
    left over on either side are counted as near a threshold when `near_threshold` says so, else
    listed as unexplained. Both are SA-1B documents of the same image."""
    from ssa.masks import decode_rle

    def decoded(doc):
        size = (doc["image"]["height"], doc["image"]["width"])
        return [(decode_rle(a["segmentation"], size), a) for a in doc["annotations"]]

    ref, got = decoded(reference), decoded(other)
    everyone = [a for _, a in ref + got]
    used: set[int] = set()
    matched, near, unexplained = 0, 0, []
    for mask, ann in ref:
        best, best_iou = None, 0.0
        for j, (candidate, _) in enumerate(got):
            if j not in used:
                union = np.logical_or(mask, candidate).sum()
                iou = float(np.logical_and(mask, candidate).sum() / union) if union else 0.0
                if iou > best_iou:
                    best, best_iou = j, iou
        if best is not None and best_iou >= 0.99 and \
                all(abs(x - y) <= 1 for x, y in zip(ann["bbox"], got[best][1]["bbox"])):
            used.add(best)
            matched += 1
        elif near_threshold(ann, [a for a in everyone if a is not ann], p):
            near += 1
        else:
            unexplained.append(f"reference mask {ann.get('id')}: best match IoU {best_iou:.4f}")
    for j, (_, ann) in enumerate(got):
        if j in used:
            continue
        if near_threshold(ann, [a for a in everyone if a is not ann], p):
            near += 1
        else:
            unexplained.append(f"mask {ann.get('id')} only in the second set")
    return {"reference": len(ref), "triton": len(got), "matched": matched, "near_threshold": near,
            "unexplained": unexplained}
