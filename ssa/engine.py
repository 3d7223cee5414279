"""The SSA engine, batched, chunked and device-resident: the masks of an image go through each
model a chunk of at most `batch_size` masks at a time, and every array of the data plane is a
tensor on the models' device.

The image goes up once (uint8); OneFormer runs once on the whole image and its two class maps are
kept as uint8 (H, W) tensors; then each chunk of masks goes crop -> models -> per-mask answers,
its masks going up as the pixels of their own extents (decoded from their RLEs one at a time, never
as image-sized arrays), so memory per image does not grow with the number of masks beyond the
answers. Crops, resizes, normalisation, OneFormer's map resize + argmax, the close-set majority
votes and CLIPSeg's resize + vote run on the device. Only token ids, names, small score vectors and
the answers come back. The models are injected (`TensorModels`), so ONNX Runtime or PyTorch
in-process and Triton share this code. docs/data_plane.md says where every tensor lives and states
the memory bound; the reference pipeline (`ssa.reference`) runs it one mask at a time with PyTorch,
for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ssa.candidates import clip_proposals, union_candidates
from ssa.device import to_device, to_host
from ssa.geometry import Box, crop_box
from ssa.labels import class_names
from ssa.nouns import load_spacy, noun_phrases_batch
from ssa.params import EngineParams, MaskLabel
from ssa.pixels import crop_tensor
from ssa.preprocess import Processors
from ssa.sa1b import MaskSet
from ssa.vocabulary import Vocabulary, class_embeddings, mask_candidates
from ssa.voting import count_margin

DATASETS = ("coco", "ade20k")
# bytes of one chunk of resized class maps (OneFormer: classes x H x W float32)
RESIZE_CHUNK_BYTES = 256 << 20
# mask pixels (bool bytes) of one chunk's regions on the device at most (a chunk holds at least one mask)
REGION_CHUNK_BYTES = 256 << 20
# pixels counted per index_add_ call (its int64 index and weights: 16 bytes a pixel)
COUNT_BAND_PIXELS = 1 << 22
# a class is dropped from a resize when it loses to another class by more than this share of the
# largest |score| at every corner of every cell: several times the float32 rounding of a bilinear sum
PRUNE_TOLERANCE = 1e-6


@dataclass
class ChunkInputs:
    """The inputs of the per-mask image models for one chunk of masks, on the engine's device."""

    rows: range  # the masks of the chunk (document order)
    blip: torch.Tensor  # (B, 3, S, S) float32
    clip: torch.Tensor  # (B, 3, 224, 224) float32
    caption_max_length: int


@dataclass
class ChunkOutputs:
    token_ids: torch.Tensor  # (B, T) int64
    image_embeds: torch.Tensor  # (B, E) L2-normalised CLIP embeddings


class TensorModels(Protocol):
    """The exported models as tensor functions: batch-major torch tensors on `device` in and out."""

    device: torch.device
    clip_logit_scale: float

    def semantic_scores(self, inputs: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Both OneFormers on the whole image: dataset -> (1, C, h/4, w/4) scores from
        (pixels (1, 3, h, w), task ids (1, 77))."""

    def mask_stage(self, inputs: ChunkInputs) -> ChunkOutputs:
        """BLIP captions and CLIP image embeddings of one chunk of crops: independent of each other,
        so a backend may run them together."""

    def clip_text(self, names: Sequence[str]) -> torch.Tensor:
        """(N, E) L2-normalised text embeddings of `names`."""

    def clipseg(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """(M, K, S, S) logits for M crops (M, 3, S, S), K prompts per crop."""


def plan_chunks(extents: np.ndarray, batch_size: int, region_bytes: int = REGION_CHUNK_BYTES) -> list[range]:
    """Consecutive chunks of at most `batch_size` masks whose extents hold at most `region_bytes`
    pixels together (a chunk always takes one mask, however large). extents: (N, 4) [y0, x0, y1, x1)."""
    areas = (extents[:, 2] - extents[:, 0]) * (extents[:, 3] - extents[:, 1])
    chunks, start, held = [], 0, 0
    for i, area in enumerate(areas.tolist()):
        if i > start and (i - start >= batch_size or held + area > region_bytes):
            chunks.append(range(start, i))
            start, held = i, 0
        held += area
    if len(areas):
        chunks.append(range(start, len(areas)))
    return chunks


@dataclass
class DeviceMasks:
    """Some masks of one image on the device, each as the pixels of its extent.

    extents: (M, 4) int host array [y0, x0, y1, x1) of each mask's set pixels; regions[i]: the
    (y1 - y0, x1 - x0) bool tensor of mask i inside its extent. All regions go up in one transfer.
    """

    extents: np.ndarray
    regions: list[torch.Tensor]

    @classmethod
    def upload(cls, mask_set: MaskSet, rows: Sequence[int], device: torch.device) -> DeviceMasks:
        """The masks `rows` of `mask_set`, decoded one at a time on the host and sent up together."""
        extents = mask_set.extents[list(rows)].reshape(-1, 4)
        parts = [mask_set.region(i).ravel() for i in rows]
        flat = to_device(np.concatenate(parts) if parts else np.zeros(0, bool), device, "masks")
        sizes = [(int(y1 - y0), int(x1 - x0)) for y0, x0, y1, x1 in extents]
        pieces = torch.split(flat, [h * w for h, w in sizes])
        return cls(extents, [p.reshape(h, w) for p, (h, w) in zip(pieces, sizes)])

    def __len__(self) -> int:
        return len(self.regions)

    def votes(self, label_map: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per mask, the most frequent class of the (H, W) `label_map` inside it (ties to the lowest
        class) and the vote's margin ((best - runner-up) / pixels): two (M,) device tensors."""
        counts = torch.stack([count_inside(label_map[y0:y1, x0:x1], region, num_classes)
                              for (y0, x0, y1, x1), region in zip(self.extents, self.regions)])
        top = torch.topk(counts, min(2, num_classes), dim=1).values.double()
        runner_up = top[:, 1] if top.shape[1] > 1 else torch.zeros_like(top[:, 0])
        return torch.argmax(counts, dim=1), (top[:, 0] - runner_up) / counts.sum(dim=1).clamp(min=1)

    def crop(self, i: int, box: Box) -> torch.Tensor:
        """(box.height, box.width) bool tensor: mask i inside the inclusive `box`."""
        y0, x0, y1, x1 = (int(v) for v in self.extents[i])
        out = torch.zeros((box.height, box.width), dtype=torch.bool, device=self.regions[i].device)
        top, left = max(y0, box.y1), max(x0, box.x1)
        bottom, right = min(y1, box.y2 + 1), min(x1, box.x2 + 1)
        if top < bottom and left < right:
            out[top - box.y1 : bottom - box.y1, left - box.x1 : right - box.x1] = \
                self.regions[i][top - y0 : bottom - y0, left - x0 : right - x0]
        return out


def count_inside(labels: torch.Tensor, mask: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels,) int64: how many pixels of `mask` carry each label of `labels` (both (h, w)).

    Counted by adding the mask into a fixed-size vector rather than by indexing with the mask: a
    boolean index has a data-dependent size, which on a GPU stops the host until the device is done.
    Rows go a band at a time, so the int64 index of a large region never lives whole.
    """
    counts = torch.zeros(num_labels, dtype=torch.int64, device=labels.device)
    rows = max(1, COUNT_BAND_PIXELS // max(1, labels.shape[1]))
    for r in range(0, labels.shape[0], rows):
        counts.index_add_(0, labels[r : r + rows].reshape(-1).long(), mask[r : r + rows].reshape(-1).long())
    return counts


def possible_winners(scores: torch.Tensor) -> torch.Tensor:
    """(K,) int64, ascending: the classes of `scores` (C, h, w) that can win the argmax somewhere
    in its bilinear resize to any size. Each resized value is a convex combination of the four
    corners of one cell of neighbouring pixels, so class c loses everywhere in a cell when, at each
    corner, it is below the class with the largest corner mean there by more than the rounding of
    a bilinear sum; a class that loses in every cell is never the argmax, nor tied with it."""
    c = scores.shape[0]
    x = scores.float()
    if x.shape[1] == 1:
        x = torch.cat([x, x], dim=1)
    if x.shape[2] == 1:
        x = torch.cat([x, x], dim=2)
    if c == 1 or not bool(torch.isfinite(x).all()):
        return torch.arange(c, device=scores.device)
    corners = torch.stack([x[:, :-1, :-1], x[:, 1:, :-1], x[:, :-1, 1:], x[:, 1:, 1:]])  # (4, C, h-1, w-1)
    best = corners.mean(dim=0).permute(1, 2, 0).contiguous().argmax(dim=-1)  # (h-1, w-1); innermost: fast
    best_corners = torch.gather(corners, 1, best[None, None].expand(4, 1, *best.shape))  # (4, 1, h-1, w-1)
    gap = (corners - best_corners).amax(dim=0)  # (C, h-1, w-1): c's best chance against that class
    tolerance = PRUNE_TOLERANCE * corners.abs().amax(dim=(0, 1))
    return torch.nonzero((gap >= -tolerance).flatten(1).any(dim=1)).flatten()


def resized_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) argmax over C of `scores` (C, h, w) resized bilinearly (half-pixel centres) to `size`,
    ties to the lowest class; uint8 when C <= 256 (else int64).

    Only the classes that can win somewhere are resized (`possible_winners`), each by one full
    resize (so its values are those of resizing all classes at once, as the processors do), a few
    at a time, so a 150-class map of a large image never lives at full size: memory is about 10
    bytes a pixel beyond one chunk of RESIZE_CHUNK_BYTES, time a few passes over the pixels per class
    that can win.
    """
    c = scores.shape[0]
    dtype = torch.uint8 if c <= 256 else torch.int64
    # pruning reads every class at every input pixel: worth it when the output is the larger grid
    # (OneFormer's maps, upscaled ~16x in pixels), not for CLIPSeg's 512 x 512 logits of a small crop
    large = size[0] * size[1] > 4 * scores.shape[1] * scores.shape[2]
    keep = possible_winners(scores) if large else torch.arange(c, device=scores.device)
    if len(keep) == 1:
        return torch.full(size, int(keep[0]), dtype=dtype, device=scores.device)
    step = max(1, RESIZE_CHUNK_BYTES // max(1, 4 * size[0] * size[1]))
    best_value = best_index = None
    for start in range(0, len(keep), step):
        classes = keep[start : start + step]
        part = F.interpolate(scores[None, classes].float(), size=size, mode="bilinear", align_corners=False)[0]
        if len(classes) == 1:
            value, index = part[0], None
        else:
            value, index = part.max(dim=0)
            index = classes[index].to(dtype)
        if best_value is None:
            best_value = value
            best_index = index if index is not None else torch.full(size, int(classes[0]), dtype=dtype,
                                                                       device=scores.device)
            continue
        better = value > best_value  # strict: ties keep the lower class
        torch.where(better, value, best_value, out=best_value)
        if index is None:
            best_index.masked_fill_(better, int(classes[0]))
        else:
            torch.where(better, index, best_index, out=best_index)
        del part, value, index, better
    return best_index


class ImageJob:
    """One image through the engine, a chunk of masks at a time.

    `oneformer_inputs()` -> the models' `semantic_scores` -> `set_semantic()` once; then for each
    chunk of `chunks`, `chunk_inputs(rows)` -> the models' `mask_stage` -> `finish_chunk(rows, ...)`.
    Split so a backend can run independent models together (Triton's async BLS); `annotate_image`
    runs the steps in a row. Memory per image: the image, its two label maps and one chunk at a
    time (docs/data_plane.md states the bound).
    """

    def __init__(self, image: np.ndarray, mask_set: MaskSet, models: TensorModels, processors: Processors,
                 params: EngineParams, nlp=None, kernel: str = "auto", vocabulary: Vocabulary | None = None):
        self.models, self.processors, self.params, self.kernel = models, processors, params, kernel
        self.vocabulary = vocabulary
        self.nlp = nlp or load_spacy()
        self.device = models.device
        self.size = image.shape[:2]
        self.image = to_device(image, self.device, "image")  # (H, W, 3) uint8
        self.mask_set = mask_set
        self.chunks = plan_chunks(mask_set.extents, params.batch_size)
        self.label_maps: dict[str, torch.Tensor] | None = None  # dataset -> (H, W) uint8

    def _boxes(self, rows: Sequence[int], scale: float) -> list[Box]:
        return [crop_box(self.mask_set.bboxes[i], scale, self.size) for i in rows]

    def oneformer_inputs(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        plans = self.processors.plans
        return {ds: (plans[f"oneformer_{ds}"].pixels(self.image, self.kernel)[None],
                     self.processors.task_inputs(ds, self.device)) for ds in DATASETS}

    def set_semantic(self, scores: dict[str, torch.Tensor]) -> None:
        """OneFormer's scores -> the (H, W) class maps the close-set votes read."""
        self.label_maps = {ds: resized_argmax(scores[ds][0], self.size) for ds in DATASETS}

    def chunk_inputs(self, rows: range) -> ChunkInputs:
        plans, p = self.processors.plans, self.params
        return ChunkInputs(rows=rows,
                           blip=plans["blip"].batch(self.image, self._boxes(rows, p.scale_large), self.kernel),
                           clip=plans["clip"].batch(self.image, self._boxes(rows, p.scale_small), self.kernel),
                           caption_max_length=p.caption_max_length)

    def finish_chunk(self, rows: range, out: ChunkOutputs) -> list[MaskLabel]:
        """The labels of the masks `rows` from their chunk's BLIP and CLIP outputs: close-set votes,
        candidates, CLIP's top-k, CLIPSeg's vote."""
        if self.label_maps is None:
            raise RuntimeError("set_semantic() must run before finish_chunk()")
        n, p = len(rows), self.params
        masks = DeviceMasks.upload(self.mask_set, rows, self.device)
        close, close_margins = [], []
        for ds in DATASETS:
            best, margin = masks.votes(self.label_maps[ds], len(class_names(ds)))
            close.append(best)
            close_margins.append(margin)
        close_ids = to_host(torch.stack(close, dim=1), "close_set_votes")  # (n, 2)
        close_margin = to_host(torch.stack(close_margins, dim=1).min(dim=1).values, "close_set_votes")
        close_set = [[class_names(ds)[int(c)] for ds, c in zip(DATASETS, row)] for row in close_ids]

        captions = [self.processors.caption_text(ids) for ids in to_host(out.token_ids, "token_ids")]
        phrases = noun_phrases_batch(captions, self.nlp)
        candidates = [mask_candidates(c, ph, self.vocabulary) for c, ph in zip(close_set, phrases)]

        image_embeds = to_host(out.image_embeds, "clip_image_embeds")
        distinct = union_candidates(*candidates)
        embeds = class_embeddings(distinct, lambda t: to_host(self.models.clip_text(t), "clip_text_embeds"),
                                  self.vocabulary)
        text = dict(zip(distinct, embeds))
        proposals = [clip_proposals(image_embeds[j], np.stack([text[c] for c in cands]),
                                    self.models.clip_logit_scale, cands, p.top_k)
                     for j, cands in enumerate(candidates)]

        k_max = max(len(names) for names, *_ in proposals)
        counts = torch.zeros((n, k_max), dtype=torch.int64, device=self.device)
        huge = self._boxes(rows, p.scale_huge)
        plan = self.processors.plans["clipseg"]
        pixels = torch.cat([F.interpolate(plan.pixels(crop_tensor(self.image, box), self.kernel)[None],
                                          size=(p.clipseg_size, p.clipseg_size), mode="bilinear",
                                          align_corners=False) for box in huge])
        logits = self.models.clipseg(pixels, [names for names, *_ in proposals])
        del pixels
        for j, box in enumerate(huge):
            k = len(proposals[j][0])
            winners = resized_argmax(logits[j, :k], (box.height, box.width))
            counts[j, :k] = count_inside(winners, masks.crop(j, box), k)
        counts = to_host(counts, "clipseg_votes")

        labels = []
        for j, (names, scores, clip_margin) in enumerate(proposals):
            votes = counts[j, : len(names)]  # every pixel of the cropped mask votes for one proposal
            winner = int(np.argmax(votes))  # ties to the earliest proposal
            share = float(votes[winner] / votes.sum()) if votes.sum() else 0.0
            margins = {"close_set": float(close_margin[j]), "clip": clip_margin, "clipseg": count_margin(votes)}
            labels.append(MaskLabel(names[winner], names, scores, share, captions[j], margins))
        return labels


    def run(self) -> list[MaskLabel]:
        """Every step in a row, one model call at a time: the labels of every mask, in order."""
        self.set_semantic(self.models.semantic_scores(self.oneformer_inputs()))
        labels: list[MaskLabel] = []
        for rows in self.chunks:
            labels += self.finish_chunk(rows, self.models.mask_stage(self.chunk_inputs(rows)))
        return labels


def annotate_image(image: np.ndarray, mask_set: MaskSet, models: TensorModels, processors: Processors,
                   params: EngineParams = EngineParams(), nlp=None, kernel: str = "auto",
                   vocabulary: Vocabulary | None = None) -> list[MaskLabel]:
    """Label every mask of one image. image: (H, W, 3) uint8 RGB; mask_set: validated masks + bboxes.

    kernel: how the device resizes crops ("auto": Pillow on the CPU, the exact tensor form on a GPU).
    vocabulary: the user's class names, merged into every mask's candidates or replacing them.
    """
    if len(mask_set) == 0:
        return []
    return ImageJob(image, mask_set, models, processors, params, nlp, kernel, vocabulary).run()
