"""Text embeddings by name, each distinct name encoded once (candidate names repeat across masks
and images: "wall", "sky", "a person")."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

Tokenize = Callable[[Sequence[str]], dict[str, np.ndarray]]
Encode = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, attention_mask) (N, 77) -> (N, E)


class TextEmbeddingCache:
    """Least-recently-used cache of name -> (E,) embedding in front of a text encoder."""

    def __init__(self, tokenize: Tokenize, encode: Encode, capacity: int = 100_000):
        self.tokenize, self.encode, self.capacity = tokenize, encode, capacity
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.encoded = 0  # names sent to the encoder so far

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        """(N, E) embeddings of `names`, in order; the missing distinct names go in one encoder call."""
        missing = list(dict.fromkeys(n for n in names if n not in self._cache))
        if missing:
            tokens = self.tokenize(missing)
            for name, emb in zip(missing, self.encode(tokens["input_ids"], tokens["attention_mask"])):
                self._cache[name] = emb
            self.encoded += len(missing)
        out = []
        for name in names:
            self._cache.move_to_end(name)
            out.append(self._cache[name])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return np.stack(out) if out else np.zeros((0, 0), np.float32)


def prompt_matrix(prompts: Sequence[Sequence[str]], embed: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
    """(M, K, P) conditional embeddings: K = the longest prompt list; shorter lists repeat their
    first prompt (those extra maps are ignored by the vote)."""
    k = max(len(p) for p in prompts)
    padded = [list(p) + [p[0]] * (k - len(p)) for p in prompts]
    flat = embed([name for row in padded for name in row])
    return flat.reshape(len(prompts), k, -1)
