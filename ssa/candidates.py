"""Candidate names of a mask and CLIP's top-k proposals among them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def union_candidates(*groups: Iterable[str]) -> list[str]:
    """All names of `groups`, in the order given, each once (first occurrence kept).

    The published engine used a Python set here, so its order (and its ties) changed from run
    to run with string hashing; this order is fixed: close-set names first, then noun phrases.
    """
    seen: dict[str, None] = {}
    for group in groups:
        for name in group:
            name = name.strip()
            if name and name not in seen:
                seen[name] = None
    return list(seen)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64 for stable scores."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def top_k(scores: np.ndarray, k: int) -> list[int]:
    """Indices of the k highest `scores` (1-D), best first; ties go to the lowest index."""
    k = max(0, min(int(k), scores.shape[0]))
    return [int(i) for i in np.argsort(-np.asarray(scores), kind="stable")[:k]]


def clip_logits(image_embed: np.ndarray, text_embeds: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N,) float64 CLIP logits of one (E,) image embedding against (N, E) text embeddings."""
    return float(logit_scale) * (text_embeds.astype(np.float64) @ image_embed.astype(np.float64))


def logit_margin(logits: np.ndarray, k: int) -> float:
    """The smallest gap between consecutive logits among the k + 1 best: how close the top-k choice
    and its order came to a tie (inf with one candidate)."""
    best = np.sort(np.asarray(logits, dtype=np.float64))[::-1][: k + 1]
    return float(np.min(best[:-1] - best[1:])) if best.size > 1 else float("inf")


def clip_proposals(
    image_embed: np.ndarray, text_embeds: np.ndarray, logit_scale: float, names: Sequence[str], k: int
) -> tuple[list[str], list[float], float]:
    """CLIP's top-k of `names` for one crop.

    image_embed: (E,) L2-normalised image embedding; text_embeds: (N, E) L2-normalised, one per name.
    Returns the k = min(k, N) best names, their softmax probabilities over all N names, and the
    decision's `logit_margin`.
    """
    logits = clip_logits(image_embed, text_embeds, logit_scale)
    probs = softmax(logits)
    best = top_k(probs, k)
    return [names[i] for i in best], [float(probs[i]) for i in best], logit_margin(logits, k)
