"""Text embeddings by name, each distinct name encoded once (candidate names repeat across masks
and images: "wall", "sky", "a person"). Embeddings stay on the encoder's device."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ssa.preprocess import token_groups

Tokenize = Callable[[Sequence[str]], dict[str, np.ndarray]]
# (input_ids, attention_mask) (N, L) int64 host arrays, L one of ssa.preprocess.TEXT_BUCKETS ->
# (N, E) tensor on the encoder's device
Encode = Callable[[np.ndarray, np.ndarray], torch.Tensor]


class TextEmbeddingCache:
    """Least-recently-used cache of name -> (E,) embedding in front of a text encoder."""

    def __init__(self, tokenize: Tokenize, encode: Encode, capacity: int = 100_000):
        self.tokenize, self.encode, self.capacity = tokenize, encode, capacity
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.encoded = 0  # names sent to the encoder so far

    def __call__(self, names: Sequence[str]) -> torch.Tensor:
        """(N, E) embeddings of `names`, in order; the missing distinct names go in one encoder call."""
        missing = list(dict.fromkeys(n for n in names if n not in self._cache))
        if missing:
            tokens = self.tokenize(missing)
            ids, mask = tokens["input_ids"], tokens["attention_mask"]
            # one call per token length, each name at its own (ssa.preprocess.token_groups). The rows
            # land in one copy, then row views of it: a view of the encoder's output would keep that
            # whole buffer alive (on a GPU, memory of Triton's CUDA pool, on the CPU a shared memory
            # region) for as long as a name stays cached; a copy per row costs an allocation a name,
            # which fragments the heap (measured: +50 KB of peak RSS a mask at 2,000 masks)
            encoded = None
            for length, rows in token_groups(mask):
                part = self.encode(np.ascontiguousarray(ids[rows, :length]), np.ascontiguousarray(mask[rows, :length]))
                if encoded is None:
                    encoded = part.new_empty((len(missing), *part.shape[1:]))
                encoded[torch.as_tensor(rows, device=part.device)] = part
            for name, emb in zip(missing, encoded):
                self._cache[name] = emb
            self.encoded += len(missing)
        out = []
        for name in names:
            self._cache.move_to_end(name)
            out.append(self._cache[name])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)
        return torch.stack(out) if out else torch.zeros((0, 0))


def prompt_matrix(prompts: Sequence[Sequence[str]], embed: Callable[[Sequence[str]], torch.Tensor]) -> torch.Tensor:
    """(M, K, P) conditional embeddings: K = the longest prompt list; shorter lists repeat their
    first prompt (those extra maps are ignored by the vote)."""
    k = max(len(p) for p in prompts)
    padded = [list(p) + [p[0]] * (k - len(p)) for p in prompts]
    flat = embed([name for row in padded for name in row])
    return flat.reshape(len(prompts), k, -1)
