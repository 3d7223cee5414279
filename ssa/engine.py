"""The SSA engine, batched: every mask of an image goes through each model in one call (or a few
chunks), and the models are injected, so ONNX Runtime in-process and Triton share this code.

`annotate_image` is SPEC.md's "Per image" section; the reference pipeline (`ssa.reference`) is the
same algorithm run one mask at a time with PyTorch, for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from ssa.candidates import clip_proposals, union_candidates
from ssa.geometry import crop, crop_box
from ssa.labels import class_names
from ssa.nouns import load_spacy, noun_phrases
from ssa.preprocess import Processors
from ssa.resize import resized_argmax
from ssa.sa1b import MaskSet
from ssa.voting import majority_class, pixel_vote

DATASETS = ("coco", "ade20k")


@dataclass(frozen=True)
class EngineParams:
    """Parameters of the algorithm (SPEC.md defaults)."""

    top_k: int = 3
    scale_small: float = 1.2  # CLIP crop
    scale_large: float = 1.6  # BLIP crop
    scale_huge: float = 1.6  # CLIPSeg crop (and mask crop)
    caption_max_length: int = 20  # tokens including the decoder start token (HF generate's default)
    clipseg_size: int = 512  # CLIPSeg input side after the bilinear resize
    batch_size: int = 32  # masks per model call

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        for name in ("scale_small", "scale_large", "scale_huge"):
            if not getattr(self, name) >= 1.0:
                raise ValueError(f"{name} must be >= 1.0, got {getattr(self, name)}")
        if self.caption_max_length < 2 or self.clipseg_size < 16 or self.batch_size < 1:
            raise ValueError(f"invalid parameters {self}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MaskLabel:
    """The engine's answer for one mask."""

    class_name: str
    class_proposals: list[str]
    proposal_scores: list[float]  # CLIP softmax probability of each proposal, over all candidates
    vote_share: float  # share of the (huge-cropped) mask's pixels that CLIPSeg gave to class_name
    caption: str

    def fields(self) -> dict:
        """The fields added to an SA-1B annotation."""
        return {"class_name": self.class_name, "class_proposals": list(self.class_proposals),
                "class_proposal_scores": [round(s, 6) for s in self.proposal_scores],
                "class_name_vote": round(self.vote_share, 6), "caption": self.caption}


class TensorModels(Protocol):
    """The exported models as tensor functions (batch-major NumPy arrays in and out)."""

    clip_logit_scale: float

    def oneformer(self, dataset: str, pixel_values: np.ndarray, task_inputs: np.ndarray) -> np.ndarray:
        """(B, C, h/4, w/4) float32 semantic scores (class softmax without "no object" x mask sigmoid)."""

    def blip_caption(self, pixel_values: np.ndarray, max_length: int) -> np.ndarray:
        """(N, T) int64 greedy caption ids for (N, 3, S, S) pixel values."""

    def clip_image(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, E) L2-normalised image embeddings."""

    def clip_text(self, names: Sequence[str]) -> np.ndarray:
        """(N, E) L2-normalised text embeddings of `names`."""

    def clipseg(self, pixel_values: np.ndarray, prompts: Sequence[Sequence[str]]) -> np.ndarray:
        """(M, K, S, S) logits for M crops (M, 3, S, S), K prompts per crop."""


def semantic_label_maps(models: TensorModels, processors: Processors, image: np.ndarray) -> dict[str, np.ndarray]:
    """Per dataset, the (H, W) int64 OneFormer semantic label map of the whole image."""
    maps = {}
    for dataset in DATASETS:
        inputs = processors.oneformer_inputs(dataset, image)
        scores = models.oneformer(dataset, inputs["pixel_values"], inputs["task_inputs"])[0]
        maps[dataset] = resized_argmax(scores, image.shape[:2])
    return maps


def annotate_image(image: np.ndarray, mask_set: MaskSet, models: TensorModels, processors: Processors,
                   params: EngineParams = EngineParams(), nlp=None) -> list[MaskLabel]:
    """Label every mask of one image. image: (H, W, 3) uint8 RGB; mask_set: validated masks + bboxes."""
    nlp = nlp or load_spacy()
    n = len(mask_set)
    if n == 0:
        return []
    size = image.shape[:2]
    maps = semantic_label_maps(models, processors, image)
    close_set = []
    for mask in mask_set.masks:
        names = []
        for dataset in DATASETS:
            table = class_names(dataset)
            names.append(table[majority_class(maps[dataset], mask, len(table))])
        close_set.append(names)

    def crops(scale: float) -> list[np.ndarray]:
        return [crop(image, crop_box(b, scale, size)) for b in mask_set.bboxes]

    chunks = [slice(i, i + params.batch_size) for i in range(0, n, params.batch_size)]
    large = crops(params.scale_large)
    token_ids = [row for c in chunks
                 for row in models.blip_caption(processors.blip_pixels(large[c]), params.caption_max_length)]
    del large
    captions = [processors.caption_text(ids) for ids in token_ids]
    candidates = [union_candidates(close, noun_phrases(cap, nlp)) for close, cap in zip(close_set, captions)]

    small = crops(params.scale_small)
    image_embeds = np.concatenate([models.clip_image(processors.clip_pixels(small[c])) for c in chunks])
    del small
    distinct = union_candidates(*candidates)
    text_embeds = dict(zip(distinct, models.clip_text(distinct)))
    proposals = [
        clip_proposals(image_embeds[i], np.stack([text_embeds[c] for c in cands]), models.clip_logit_scale,
                       cands, params.top_k)
        for i, cands in enumerate(candidates)
    ]

    labels: list[MaskLabel] = []
    for c in chunks:
        boxes = [crop_box(b, params.scale_huge, size) for b in mask_set.bboxes[c]]
        pixels = np.concatenate([processors.clipseg_pixels(crop(image, box), params.clipseg_size) for box in boxes])
        logits = models.clipseg(pixels, [proposals[i][0] for i in range(n)[c]])
        for j, (i, box) in enumerate(zip(range(n)[c], boxes)):
            names, scores = proposals[i]
            k = len(names)
            resized = resized_argmax(logits[j, :k], (box.height, box.width))
            winner, share = pixel_vote(resized, crop(mask_set.masks[i], box), k)
            labels.append(MaskLabel(names[winner], names, scores, share, captions[i]))
    return labels

