"""The reference pipeline: the SSA engine in plain PyTorch + transformers, one mask at a time,
each model in turn, as the published engine runs it (with its defects fixed, see docs/engine.md).

It is the baseline every faster path is compared against, so it stays simple and close to the
published code; every non-model step comes from this package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssa.candidates import clip_logits, logit_margin, softmax, top_k
from ssa.engine import DATASETS
from ssa.geometry import crop, crop_box
from ssa.labels import class_names
from ssa.nouns import load_spacy, noun_phrases
from ssa.params import EngineParams, MaskLabel
from ssa.preprocess import CHANNELS_LAST
from ssa.profiles import ROLES, load_processor, load_role_model
from ssa.sa1b import MaskSet
from ssa.timing import NO_TIMER
from ssa.vocabulary import Vocabulary, class_embeddings, mask_candidates
from ssa.voting import class_counts, count_margin, pixel_vote


@dataclass
class TorchModels:
    """The five models of a profile directory with their processors, in PyTorch (eval mode)."""

    profile: dict
    models: dict
    processors: dict
    device: str = "cpu"

    @classmethod
    def load(cls, profile_dir: str | Path, device: str = "cpu") -> TorchModels:
        d = Path(profile_dir)
        if not (d / "profile.json").is_file():
            raise FileNotFoundError(f"{d} is not a profile directory (no profile.json); build it with `ssa models`")
        models, processors = {}, {}
        for role in ROLES:
            models[role] = load_role_model(d / role, role).to(device)
            processors[role] = load_processor(d / role)
        return cls(json.loads((d / "profile.json").read_text()), models, processors, device)


def semantic_map(models: TorchModels, dataset: str, image: np.ndarray):
    """(H, W) int64 torch label map: OneFormer "semantic" + the processor's post-processing."""
    import torch

    role = f"oneformer_{dataset}"
    processor, model = models.processors[role], models.models[role]
    inputs = processor(images=image, task_inputs=["semantic"], return_tensors="pt",
                       input_data_format=CHANNELS_LAST).to(models.device)
    with torch.no_grad():
        outputs = model(**inputs)
    return processor.post_process_semantic_segmentation(outputs, target_sizes=[image.shape[:2]])[0]


def caption(models: TorchModels, patch: np.ndarray, max_length: int) -> tuple[str, float]:
    """BLIP's unconditional greedy caption of one crop, and its decision margin: the smallest gap
    between the chosen token's logit and the next best over the caption's steps (a gap near 0 is a
    near-tie: any rounding may pick the other token and change the caption from there on)."""
    import torch

    processor, model = models.processors["blip"], models.models["blip"]
    inputs = processor(images=patch, return_tensors="pt", input_data_format=CHANNELS_LAST).to(models.device)
    with torch.no_grad():
        out = model.generate(**inputs, max_length=max_length, do_sample=False, num_beams=1,
                             output_logits=True, return_dict_in_generate=True)
    gaps = [float(g[0, 0] - g[0, 1]) for g in (s.double().topk(2, dim=-1).values for s in out.logits)]
    return processor.decode(out.sequences[0].cpu(), skip_special_tokens=True).strip(), min(gaps, default=float("inf"))


def clip_classification(models: TorchModels, patch: np.ndarray, names: list[str], k: int,
                        vocabulary: Vocabulary | None = None):
    """CLIP's top-k of `names` for one crop: (names best first, their softmax probabilities, the
    decision's logit margin). A vocabulary class with synonyms is scored with the normalised mean
    of its names' text embeddings."""
    import torch

    processor, model = models.processors["clip"], models.models["clip"]
    if vocabulary is None or all(len(vocabulary.texts(n)) == 1 for n in names):
        inputs = processor(text=names, images=patch, return_tensors="pt", padding=True,
                           input_data_format=CHANNELS_LAST).to(models.device)
        with torch.no_grad():
            logits = model(**inputs).logits_per_image[0].double().cpu().numpy()
    else:
        def embed(texts):
            tokens = processor(text=list(texts), return_tensors="pt", padding=True).to(models.device)
            with torch.no_grad():
                pooled = model.text_model(**tokens).pooler_output
                return _normalise(model.text_projection(pooled)).cpu().numpy()

        pixels = processor(images=patch, return_tensors="pt", input_data_format=CHANNELS_LAST).to(models.device)
        with torch.no_grad():
            pooled = model.vision_model(pixel_values=pixels["pixel_values"]).pooler_output
            image_embed = _normalise(model.visual_projection(pooled))[0].cpu().numpy()
        text = class_embeddings(names, embed, vocabulary)
        logits = clip_logits(image_embed, text, float(model.logit_scale.exp()))
    probs = softmax(logits)
    best = top_k(probs, k)
    return [names[i] for i in best], [float(probs[i]) for i in best], logit_margin(logits, k)


def _normalise(x):
    return x / x.norm(p=2, dim=-1, keepdim=True)


def clipseg_segmentation(models: TorchModels, patch: np.ndarray, names: list[str], size: int):
    """(h, w) int64 torch map: per pixel of the crop, the index of the prompt with the highest logit."""
    import torch
    import torch.nn.functional as F

    processor, model = models.processors["clipseg"], models.models["clipseg"]
    inputs = processor(text=names, images=[patch] * len(names), padding=True, return_tensors="pt",
                       do_resize=False, input_data_format=CHANNELS_LAST).to(models.device)
    h, w = inputs["pixel_values"].shape[-2:]
    inputs["pixel_values"] = F.interpolate(inputs["pixel_values"], size=(size, size), mode="bilinear",
                                           align_corners=False)
    with torch.no_grad():
        logits = model(**inputs).logits
    logits = logits.reshape(len(names), size, size)  # HF squeezes the prompt axis away for one prompt
    return F.interpolate(logits[None], size=(h, w), mode="bilinear", align_corners=False)[0].argmax(0)


def annotate_image(image: np.ndarray, mask_set: MaskSet, models: TorchModels,
                   params: EngineParams = EngineParams(), nlp=None, timer=NO_TIMER,
                   vocabulary: Vocabulary | None = None) -> list[MaskLabel]:
    """Label every mask of one image, one mask at a time. image: (H, W, 3) uint8 RGB.

    timer: a `ssa.timing.StageTimer` to collect seconds per model stage (benchmarks).
    vocabulary: the user's class names, merged into every mask's candidates or replacing them.
    """
    nlp = nlp or load_spacy()
    size = image.shape[:2]
    with timer("oneformer"):
        maps = {ds: semantic_map(models, ds, image).cpu().numpy() for ds in DATASETS}
    labels = []
    for i, bbox in enumerate(mask_set.bboxes):
        mask = mask_set.mask(i)  # (H, W) bool, one at a time
        close_set, close_margin = [], 1.0
        for ds in DATASETS:
            table = class_names(ds)
            counts = class_counts(maps[ds], mask, len(table))
            close_set.append(table[int(np.argmax(counts))])
            close_margin = min(close_margin, count_margin(counts))
        patch_small = crop(image, crop_box(bbox, params.scale_small, size))
        patch_large = crop(image, crop_box(bbox, params.scale_large, size))
        huge_box = crop_box(bbox, params.scale_huge, size)
        with timer("caption"):
            text, caption_margin = caption(models, patch_large, params.caption_max_length)
        candidates = mask_candidates(close_set, noun_phrases(text, nlp), vocabulary)
        with timer("clip"):
            proposals, scores, clip_margin = clip_classification(models, patch_small, candidates, params.top_k,
                                                                 vocabulary)
        with timer("clipseg"):
            winners = clipseg_segmentation(models, crop(image, huge_box), proposals, params.clipseg_size).cpu().numpy()
        winner, share, vote_margin = pixel_vote(winners, crop(mask, huge_box), len(proposals))
        margins = {"close_set": close_margin, "caption": caption_margin, "clip": clip_margin, "clipseg": vote_margin}
        labels.append(MaskLabel(proposals[winner], proposals, scores, share, text, margins))
    return labels
