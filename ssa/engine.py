"""The SSA engine, batched and device-resident: every mask of an image goes through each model in
one call (or a few chunks), and every array of the data plane is a tensor on the models' device.

The image goes up once (uint8), each mask as the pixels of its own extent (a packed region, not an
image-sized array); crops, resizes, normalisation, OneFormer's map resize + argmax, the close-set
majority votes and CLIPSeg's resize + vote run there. Only token ids, names, small score vectors
and the answers come back. The models are injected (`TensorModels`), so ONNX Runtime or PyTorch
in-process and Triton share this code. docs/data_plane.md says where every tensor lives; the reference
pipeline (`ssa.reference`) runs it one mask at a time with PyTorch, for comparison.
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


@dataclass
class ImageInputs:
    """The inputs of the models that need only the image, all on the engine's device."""

    oneformer: dict[str, tuple[torch.Tensor, torch.Tensor]]  # dataset -> (pixels (1, 3, h, w), task ids (1, 77))
    blip: torch.Tensor  # (N, 3, S, S) float32
    clip: torch.Tensor  # (N, 3, 224, 224) float32
    caption_max_length: int
    rows: int  # masks per model call at most


@dataclass
class ImageOutputs:
    semantic_scores: dict[str, torch.Tensor]  # dataset -> (1, C, h/4, w/4)
    token_ids: torch.Tensor  # (N, T) int64
    image_embeds: torch.Tensor  # (N, E) L2-normalised CLIP embeddings


class TensorModels(Protocol):
    """The exported models as tensor functions: batch-major torch tensors on `device` in and out."""

    device: torch.device
    clip_logit_scale: float

    def image_stage(self, inputs: ImageInputs) -> ImageOutputs:
        """OneFormer (both datasets), BLIP captions and CLIP image embeddings: independent of each
        other, so a backend may run them together."""

    def clip_text(self, names: Sequence[str]) -> torch.Tensor:
        """(N, E) L2-normalised text embeddings of `names`."""

    def clipseg(self, pixel_values: torch.Tensor, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """(M, K, S, S) logits for M crops (M, 3, S, S), K prompts per crop."""


@dataclass
class DeviceMasks:
    """The masks of one image on the device, each as the pixels of its extent.

    extents: (N, 4) int host array [y0, x0, y1, x1) of each mask's set pixels; regions[i]: the
    (y1 - y0, x1 - x0) bool tensor of mask i inside its extent. All regions go up in one transfer.
    """

    extents: np.ndarray
    regions: list[torch.Tensor]

    @classmethod
    def upload(cls, masks: np.ndarray, device: torch.device) -> DeviceMasks:
        extents = np.zeros((len(masks), 4), np.int64)
        parts = []
        for i, mask in enumerate(masks):
            rows = np.flatnonzero(mask.any(axis=1))
            if rows.size == 0:  # never for validated masks; kept well-defined
                extents[i] = (0, 0, 0, 0)
                parts.append(np.zeros(0, bool))
                continue
            y0, y1 = rows[0], rows[-1] + 1
            cols = np.flatnonzero(mask[y0:y1].any(axis=0))
            x0, x1 = cols[0], cols[-1] + 1
            extents[i] = (y0, x0, y1, x1)
            parts.append(mask[y0:y1, x0:x1].ravel())
        flat = to_device(np.concatenate(parts) if parts else np.zeros(0, bool), device, "masks")
        sizes = [(int(y1 - y0), int(x1 - x0)) for y0, x0, y1, x1 in extents]
        pieces = torch.split(flat, [h * w for h, w in sizes])
        return cls(extents, [p.reshape(h, w) for p, (h, w) in zip(pieces, sizes)])

    def __len__(self) -> int:
        return len(self.regions)

    def votes(self, label_map: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per mask, the most frequent class of the (H, W) `label_map` inside it (ties to the lowest
        class) and the vote's margin ((best - runner-up) / pixels): two (N,) device tensors."""
        counts = torch.stack([count_inside(label_map[y0:y1, x0:x1], region, num_classes)
                              for (y0, x0, y1, x1), region in zip(self.extents, self.regions)])
        top = torch.topk(counts, 2, dim=1).values.double()
        return torch.argmax(counts, dim=1), (top[:, 0] - top[:, 1]) / counts.sum(dim=1).clamp(min=1)

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
    """
    counts = torch.zeros(num_labels, dtype=torch.int64, device=labels.device)
    return counts.index_add_(0, labels.reshape(-1), mask.reshape(-1).to(torch.int64))


def resized_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) int64: argmax over C of `scores` (C, h, w) resized bilinearly (half-pixel centres)
    to `size`, ties to the lowest class. Classes are resized a chunk at a time, so a 150-class map
    of a large image never lives at full size; each class's values are those of one full resize."""
    c = scores.shape[0]
    step = max(1, RESIZE_CHUNK_BYTES // max(1, 4 * size[0] * size[1]))
    best_value = best_index = None
    for start in range(0, c, step):
        part = F.interpolate(scores[None, start : start + step].float(), size=size, mode="bilinear",
                             align_corners=False)[0]
        value, index = part.max(dim=0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # strict: ties keep the lower class
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    return best_index


class ImageJob:
    """One image through the engine: `image_inputs()`, the models' image stage, then `finish()`.

    Split so a backend can run the image stage's independent models together (Triton's async BLS);
    `annotate_image` runs the three steps in a row.
    """

    def __init__(self, image: np.ndarray, mask_set: MaskSet, models: TensorModels, processors: Processors,
                 params: EngineParams, nlp=None, kernel: str = "auto", vocabulary: Vocabulary | None = None):
        self.models, self.processors, self.params, self.kernel = models, processors, params, kernel
        self.vocabulary = vocabulary
        self.nlp = nlp or load_spacy()
        self.device = models.device
        self.size = image.shape[:2]
        self.image = to_device(image, self.device, "image")  # (H, W, 3) uint8
        self.masks = DeviceMasks.upload(mask_set.masks, self.device)
        self.bboxes = mask_set.bboxes

    def _boxes(self, scale: float) -> list[Box]:
        return [crop_box(b, scale, self.size) for b in self.bboxes]

    def image_inputs(self) -> ImageInputs:
        plans, p = self.processors.plans, self.params
        oneformer = {}
        for ds in DATASETS:
            pixels = plans[f"oneformer_{ds}"].pixels(self.image, self.kernel)[None]
            oneformer[ds] = (pixels, self.processors.task_inputs(ds, self.device))
        return ImageInputs(oneformer=oneformer,
                           blip=plans["blip"].batch(self.image, self._boxes(p.scale_large), self.kernel),
                           clip=plans["clip"].batch(self.image, self._boxes(p.scale_small), self.kernel),
                           caption_max_length=p.caption_max_length, rows=p.batch_size)

    def finish(self, out: ImageOutputs) -> list[MaskLabel]:
        n, p = len(self.masks), self.params
        close, close_margins = [], []
        for ds in DATASETS:
            label_map = resized_argmax(out.semantic_scores[ds][0], self.size)
            best, margin = self.masks.votes(label_map, len(class_names(ds)))
            close.append(best)
            close_margins.append(margin)
        close_ids = to_host(torch.stack(close, dim=1), "close_set_votes")  # (N, 2)
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
        proposals = [clip_proposals(image_embeds[i], np.stack([text[c] for c in cands]),
                                    self.models.clip_logit_scale, cands, p.top_k)
                     for i, cands in enumerate(candidates)]

        k_max = max(len(names) for names, *_ in proposals)
        counts = torch.zeros((n, k_max), dtype=torch.int64, device=self.device)
        huge = self._boxes(p.scale_huge)
        plan = self.processors.plans["clipseg"]
        for start in range(0, n, p.batch_size):
            rows = range(start, min(n, start + p.batch_size))
            pixels = torch.cat([F.interpolate(plan.pixels(crop_tensor(self.image, huge[i]), self.kernel)[None],
                                              size=(p.clipseg_size, p.clipseg_size), mode="bilinear",
                                              align_corners=False) for i in rows])
            logits = self.models.clipseg(pixels, [proposals[i][0] for i in rows])
            for j, i in enumerate(rows):
                k, box = len(proposals[i][0]), huge[i]
                winners = resized_argmax(logits[j, :k], (box.height, box.width))
                counts[i, :k] = count_inside(winners, self.masks.crop(i, box), k)
        counts = to_host(counts, "clipseg_votes")

        labels = []
        for i, (names, scores, clip_margin) in enumerate(proposals):
            votes = counts[i, : len(names)]  # every pixel of the cropped mask votes for one proposal
            winner = int(np.argmax(votes))  # ties to the earliest proposal
            share = float(votes[winner] / votes.sum()) if votes.sum() else 0.0
            margins = {"close_set": float(close_margin[i]), "clip": clip_margin, "clipseg": count_margin(votes)}
            labels.append(MaskLabel(names[winner], names, scores, share, captions[i], margins))
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
    job = ImageJob(image, mask_set, models, processors, params, nlp, kernel, vocabulary)
    return job.finish(models.image_stage(job.image_inputs()))
